"""kpeek sys: the kernel's identity and state: release, build id, uptime, CPUs,
taint flags, and the panic message if it panicked.

  kpeek -c vmcore sys            the kernel in a dump, at the moment of the dump
  kpeek -c vmcore sys --json

Read from kernel memory; on a live kernel whose kallsyms lists no data
symbols (init_uts_ns, runqueues: KALLSYMS_ALL), from uname(2), /proc and /sys.
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.kmsg import kernel_log
from kpeek.kernel.sysinfo import SysInfo, live_sys_info, sys_info
from kpeek.targets import open_kernel
from kpeek.textsafe import for_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sys", help="kernel release, build id, uptime, CPUs, taint, panic",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_json(p)
    p.set_defaults(func=run)


def live_build_id(path: str = "/sys/kernel/notes") -> str | None:
    """The running kernel's GNU build id (an NT_GNU_BUILD_ID note in /sys/kernel/notes)."""
    from kpeek.dump.fileformat import parse_notes

    try:
        with open(path, "rb") as f:
            notes = parse_notes(f.read())
    except OSError:
        return None
    return next((n.desc.hex() for n in notes if n.name == "GNU" and n.type == 3), None)


def run(args: argparse.Namespace) -> int:
    kernel = open_kernel(args, "kpeek sys")
    core = getattr(kernel, "core", None)
    if core is not None:
        build_id = core.vmcoreinfo.build_id if core.vmcoreinfo else None
    else:
        build_id = live_build_id()
    try:
        log, _ = kernel_log(kernel)
    except (NotSupported, UsageError) as e:
        log = []
        kernel.notes.append(f"no panic message: {e}")
    try:
        info = sys_info(kernel, log, build_id)
    except NotSupported:
        if not kernel.live:
            raise
        info = live_sys_info(build_id)
    if args.json:
        jsonout.emit("sys", {"origin": kernel.origin, **_fields(info),
                             "notes": kernel.notes + info.notes})
        return 0
    width = max(len(k) for k in _fields(info))
    for key, value in _fields(info).items():
        shown = "-" if value is None else value
        sys.stdout.write(f"{key:>{width}}: {for_terminal(str(shown))}\n")
    for note in kernel.notes + info.notes:
        sys.stderr.write(f"note: {note}\n")
    return 0


def _fields(info: SysInfo) -> dict[str, object]:
    return {
        "release": info.release,
        "version": info.version,
        "machine": info.machine,
        "nodename": info.nodename,
        "build_id": info.build_id,
        "uptime": None if info.uptime is None else round(info.uptime, 3),
        "cpus": info.cpus_possible,
        "cpus_online": info.cpus_online,
        "taint": info.taint,
        "taint_flags": info.taint_flags,
        "panic_cpu": info.panic_cpu,
        "panic": info.panic_message,
    }
