"""kpeek mod: loaded kernel modules, read from kernel memory.

Name, text and data ranges, size, reference count, taint letters, which
modules use each one, and which open files hold it (their file_operations'
owner is the module: such a file keeps the module's refcount up).

  kpeek -c vmcore mod            every module
  kpeek -c vmcore mod ext4       one module, with its holders
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.modules import Holder, Module, files_held, last_unloaded, list_modules
from kpeek.targets import open_kernel
from kpeek.textsafe import for_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mod", help="loaded kernel modules: ranges, refcounts, users, holders",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="*", help="only these modules")
    p.add_argument("--no-files", action="store_true",
                   help="skip the walk of every fd table for files holding a module")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kernel = open_kernel(args, "kpeek mod")
    if kernel.symbol_address("modules") is None:
        import os

        if kernel.live and not os.path.exists("/proc/modules"):
            raise NotSupported(f"{kernel.origin} is built without loadable modules "
                               "(no /proc/modules): there are none to show")
        raise NotSupported(f"{kernel.origin} has no symbol 'modules' (kallsyms without data "
                           "symbols: CONFIG_KALLSYMS_ALL is off)"
                           + ("; /proc/modules lists them" if kernel.live else ""))
    mods = list_modules(kernel)
    if args.name:
        unknown = set(args.name) - {m.name for m in mods}
        if unknown:
            raise UsageError(f"no module named {', '.join(sorted(unknown))} in {kernel.origin}")
        mods = [m for m in mods if m.name in args.name]
    holders = {} if args.no_files else files_held(kernel, {m.address for m in mods})
    gone = last_unloaded(kernel)
    if args.json:
        jsonout.emit("mod", {"modules": [_json(m, holders.get(m.address, [])) for m in mods],
                             "last_unloaded": gone or None})
        return 0
    out = sys.stdout
    out.write(f"{'MODULE':<16} {'NAME':<20} {'TEXT':<35} {'SIZE':>8} {'REFS':>4} "
              f"{'TAINT':<5} {'STATE':<8} USED BY\n")
    for m in mods:
        text = " ".join(f"{lo:x}-{hi:x}" for lo, hi in m.text[:1]) or "-"
        refs = "-" if m.refcount is None else str(m.refcount)
        out.write(f"{m.address:016x} {for_terminal(m.name):<20} {text:<35} {m.size:>8} "
                  f"{refs:>4} {m.taints or '-':<5} {m.state:<8} {','.join(m.used_by) or '-'}\n")
        for h in holders.get(m.address, []):
            out.write(f"{'':<16} held open by pid {h.pid} ({for_terminal(h.comm)}) "
                      f"fd {h.fd}, file 0x{h.file:x}\n")
    if gone:
        out.write(f"last unloaded: {for_terminal(gone)}\n")
    return 0


def _json(m: Module, holders: list[Holder]) -> dict:
    def ranges(rs: list[tuple[int, int]]) -> list[list[str]]:
        return [[f"0x{lo:x}", f"0x{hi:x}"] for lo, hi in rs]

    return {"name": m.name, "address": f"0x{m.address:x}", "state": m.state,
            "text": ranges(m.text), "data": ranges(m.data), "size": m.size,
            "refcount": m.refcount, "taints": m.taints, "used_by": m.used_by, "uses": m.uses,
            "held_by": [{"pid": h.pid, "comm": h.comm, "fd": h.fd, "file": f"0x{h.file:x}"}
                        for h in holders]}
