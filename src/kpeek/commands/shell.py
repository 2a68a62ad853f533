"""kpeek shell: an interactive drgn session, with no debuginfo.

drgn's types come from kpeek's BTF and its symbols from kallsyms (module
symbols included), so drgn's helpers work on a dump with nothing but the
dump, and on the live kernel through kpeek's BPF memory reader:

  kpeek -c vmcore shell
  >>> for t in for_each_task(prog): print(t.pid.value_(), t.comm.string_())
  >>> print_dmesg(prog)

Globals: ``prog`` (the drgn Program), every drgn helper, ``kernel``
(kpeek's own Kernel) and ``kpeek_bt(pid)`` (a stack unwound with ORC, as
``kpeek bt`` prints it: drgn's own unwinder needs debuginfo).
Commands can be piped in: ``kpeek -c vmcore shell < script``.
"""

from __future__ import annotations

import argparse
import sys

from kpeek.errors import NotSupported
from kpeek.targets import core_path, open_kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kpeek.kernel.program import Kernel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shell", help="interactive drgn session with kpeek's types and symbols",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import drgn.cli
    except ImportError:
        raise NotSupported("kpeek shell needs drgn (pip install drgn)") from None
    from kpeek.kernel.drgnprog import program

    kernel = open_kernel(args, "kpeek shell")
    core = core_path(args)
    try:
        prog = program(kernel, kernel.symbols, core=core)
    except (drgn.FaultError, ValueError, OSError) as e:
        raise NotSupported(f"drgn cannot open {core or 'the live kernel'}: {e}") from None

    def banner(default: str) -> str:
        where = core or "the live kernel (through the BPF memory reader)"
        return (f"{default}\nkpeek: {where}; types from BTF, symbols from kallsyms, "
                "no debuginfo. Stacks: kpeek_bt(pid) (drgn's unwinder needs debuginfo).")

    def add_globals(names: dict) -> dict:
        # drgn imports its Linux helpers only for programs it opened as a kernel itself
        import drgn.helpers.linux as linux

        for name in linux.__all__:
            names.setdefault(name, getattr(linux, name))
        names["kernel"] = kernel
        names["kpeek_bt"] = lambda pid: _print_stack(kernel, pid)
        return names

    if core is None:
        # A live Kernel is one moment (its reader caches what it read): each
        # statement gets a moment of its own, taken when its prompt is shown.
        sys.ps1 = _Rereading(kernel, getattr(sys, "ps1", ">>> "))

    drgn.cli.run_interactive(prog, banner_func=banner, globals_func=add_globals)
    return 0


class _Rereading:
    """The primary prompt: each time the console shows it (str()), the live
    kernel is read afresh, so a statement never sees the memory an earlier
    one read (a spinning task's runtime, a new process in the pid hash)."""

    def __init__(self, kernel: Kernel, prompt: object) -> None:
        self._kernel = kernel
        self._prompt = prompt

    def __str__(self) -> str:
        self._kernel.reread()
        return str(self._prompt)


def _print_stack(kernel: Kernel, pid: int) -> None:
    """A task's stack, as it is now, unwound with the kernel's ORC tables
    (kpeek bt's way)."""
    from kpeek.kernel.unwind import kernel_unwinder

    kernel.reread()
    stack = kernel_unwinder(kernel).task_stack(kernel.task(pid))
    for i, frame in enumerate(stack.frames):
        mark = "" if frame.reliable else "? "
        where = kernel.symbols.format(frame.ip) if kernel.symbols else f"0x{frame.ip:x}"
        print(f"#{i:<2} {mark}{where}")
    if not stack.complete and stack.note:
        print(f"(unwind stopped: {stack.note})")
