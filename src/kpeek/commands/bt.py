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
from kpeek.kernel.prstatus import prstatus_registers
from kpeek.kernel.unwind import cpu_current_task, kernel_unwinder, task_cpu
from kpeek.records import record
from kpeek.render import text
from kpeek.sources.proc_tasks import Vanished, read_stack
from kpeek.targets import core_path, open_kernel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bt", help="kernel stack of a task", description=__doc__)
    p.add_argument("pid", type=int, nargs="*",
                   help="task id (a thread id works too); none on a dump: the panicking CPU")
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


def unwound_stacks(args: argparse.Namespace) -> list[Shown]:
    """Each pid's stack unwound from kernel memory (dumps, or live with --unwind).

    On a dump, a task that was running on a CPU is unwound from that CPU's
    registers (the dump's PRSTATUS notes); with no pid, the CPU that panicked
    (every CPU when none did) is shown, as crash's ``bt`` does.
    """
    kernel = open_kernel(args, "kpeek bt --unwind")
    unwinder = kernel_unwinder(kernel)
    symbols = kernel.symbols
    cpu_regs = _cpu_registers(kernel)
    tasks = [(pid, kernel.task(pid)) for pid in args.pid]
    if not tasks:
        for cpu in _cpus_to_show(kernel, len(cpu_regs)):
            address = cpu_current_task(kernel, cpu)
            if address is not None:
                task = kernel.object("struct task_struct", address)
                tasks.append((task.member("pid").value_int(), task))
    out = []
    for pid, task in tasks:
        cpu = task_cpu(task)
        running = bool(task.member("on_cpu").value_int())
        from_registers = running and cpu < len(cpu_regs)
        if from_registers:
            stack = unwinder.registers_stack(cpu_regs[cpu], task)
        else:
            stack = unwinder.task_stack(task)
        lines = [("" if f.reliable else "? ") + (symbols.format(f.ip) if symbols else f"0x{f.ip:x}")
                 for f in stack.frames]
        if not stack.complete and stack.note:
            lines.append(f"(unwind stopped: {stack.note})")
        if running and not from_registers:
            # no saved registers for its CPU: its saved frame is from its last switch
            lines.insert(0, f"(running on CPU {cpu}: the stack as of its last switch)")
        out.append(Shown(pid, task.member("comm").value(), tuple(lines),
                         cpu if from_registers else None))
    return out


def _cpu_registers(kernel) -> list[dict[str, int]]:
    """Each CPU's registers at the dump (its PRSTATUS notes), in CPU order."""
    descs = getattr(getattr(kernel, "core", None), "prstatus", None) or []
    regs = [prstatus_registers(d) for d in descs]
    return [r for r in regs if r is not None]


def _cpus_to_show(kernel, count: int) -> list[int]:
    """The CPU that panicked (``panic_cpu``), else every CPU with saved registers."""
    address = kernel.symbol_address("panic_cpu")
    if address is not None:
        cpu = int.from_bytes(kernel.memory.read(address, 4), "little", signed=True)
        if 0 <= cpu < count:
            return [cpu]
    return list(range(count))


@record(frozen=True)
class Shown:
    """One stack to print: whose, and on which CPU when it came from its registers."""

    pid: int
    comm: str
    frames: tuple[str, ...]
    cpu: int | None = None


def run(args: argparse.Namespace) -> int:
    if core_path(args) or args.unwind:
        stacks = unwound_stacks(args)
    elif not args.pid:
        raise UsageError("bt needs a pid on the live kernel (with no pid, a dump shows "
                         "the CPU that panicked)")
    else:
        stacks = [Shown(pid, _comm(pid), stack_of(pid)) for pid in args.pid]
    if args.json:
        jsonout.emit("bt", {"stacks": [{"pid": s.pid, "comm": s.comm, "cpu": s.cpu,
                                        "frames": list(s.frames)} for s in stacks]})
        return 0
    out = text.console()
    for shown in stacks:
        on_cpu = f" on CPU {shown.cpu}" if shown.cpu is not None else ""
        out.print(text.name(f"PID {shown.pid} ({shown.comm}){on_cpu}"), style="bold")
        for i, frame in enumerate(shown.frames):
            out.print(text.name(f"  #{i:<2} {frame}"))
        if not shown.frames:
            out.print("  (no kernel stack: the task is running in user space or is a zombie)")
    return 0


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "surrogateescape")
    except OSError:
        return "?"
