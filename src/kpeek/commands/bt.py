"""kpeek bt PID: the kernel stack of a task, as symbol+offset lines.

On the live kernel the stack comes from /proc/PID/stack; on a dump (-c FILE),
or live with --unwind, it is unwound from memory with the kernel's own ORC
tables. Frames marked ``?`` were found by scanning the stack, not unwound.
"""

from __future__ import annotations

import argparse
import os

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import NotPermitted, UsageError
from kpeek.kernel.modules import with_module_symbols
from kpeek.kernel.unwind import kernel_unwinder
from kpeek.render import text
from kpeek.sources.proc_tasks import Vanished, read_stack
from kpeek.targets import core_path, open_kernel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bt", help="kernel stack of a task", description=__doc__)
    p.add_argument("pid", type=int, nargs="+", help="task id (a thread id works too)")
    p.add_argument("--unwind", action="store_true",
                   help="live kernel: unwind from memory with ORC instead of /proc/PID/stack")
    add_json(p)
    p.set_defaults(func=run)


def stack_of(pid: int) -> tuple[str, ...]:
    """The task's kernel stack from /proc. Raises UsageError / NotPermitted."""
    # /proc/TID works for threads too, though readdir of /proc does not list them.
    base = f"/proc/{pid}"
    if pid <= 0 or not os.path.exists(f"{base}/stack"):
        raise UsageError(f"no such task: {pid}")
    try:
        frames = read_stack(base)
    except Vanished as e:
        raise UsageError(f"task {pid} exited") from e
    if frames is None:
        if os.geteuid() == 0:
            raise NotPermitted(f"the kernel refused to show the stack of {pid} (permission denied)")
        raise NotPermitted(f"reading the kernel stack of {pid} needs root (CAP_SYS_ADMIN)")
    return frames


def unwound_stacks(args: argparse.Namespace) -> dict[int, tuple[str, ...]]:
    """Each pid's stack unwound from kernel memory (dumps, or live with --unwind)."""
    kernel = open_kernel(args, "kpeek bt --unwind")
    unwinder = kernel_unwinder(kernel)
    symbols = with_module_symbols(kernel) if core_path(args) else kernel.symbols
    out = {}
    for pid in args.pid:
        task = kernel.task(pid)
        stack = unwinder.task_stack(task)
        lines = [("" if f.reliable else "? ") + (symbols.format(f.ip) if symbols else f"0x{f.ip:x}")
                 for f in stack.frames]
        if not stack.complete and stack.note:
            lines.append(f"(unwind stopped: {stack.note})")
        out[pid] = tuple(lines)
        _COMMS[pid] = task.member("comm").value()
    return out


_COMMS: dict[int, str] = {}


def run(args: argparse.Namespace) -> int:
    if core_path(args) or args.unwind:
        stacks = unwound_stacks(args)
    else:
        stacks = {pid: stack_of(pid) for pid in args.pid}
    if args.json:
        jsonout.emit("bt", {"stacks": [{"pid": p, "frames": list(f)} for p, f in stacks.items()]})
        return 0
    out = text.console()
    for pid, frames in stacks.items():
        comm = _comm(pid)
        out.print(text.name(f"PID {pid} ({comm})"), style="bold")
        for i, frame in enumerate(frames):
            out.print(text.name(f"  #{i:<2} {frame}"))
        if not frames:
            out.print("  (no kernel stack: the task is running in user space or is a zombie)")
    return 0


def _comm(pid: int) -> str:
    if pid in _COMMS:
        return _COMMS[pid]
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "surrogateescape")
    except OSError:
        return "?"
