"""Kernel stacks and wait channels of sleeping tasks, unwound from memory (ORC).

The stack is given as /proc/PID/stack prints it ("name+0xoff/0xsize", the
scheduler's own frames left out); the wait channel is its first frame's
function, as get_wchan() finds it. A running task's stack cannot be read
from memory (its registers are live), so it has none.
"""

from __future__ import annotations

from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.modules import with_module_symbols
from kpeek.kernel.program import Kernel
from kpeek.kernel.symbols import Kallsyms
from kpeek.kernel.unwind import Unwinder, kernel_unwinder, visible


class StackReader:
    """Unwinds the stacks of one kernel's tasks."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.unwinder: Unwinder = kernel_unwinder(kernel)
        symbols: Kallsyms | None
        try:
            symbols = with_module_symbols(kernel)
        except MemoryReadError:
            symbols = kernel.symbols
        self.symbols = symbols

    def stack(self, address: int) -> tuple[str, ...]:
        """The frames of the (not running) task at ``address``; raises MemoryReadError."""
        task = self.kernel.object("struct task_struct", address)
        frames = visible(self.unwinder.task_stack(task).frames, self.kernel)
        if self.symbols is None:
            return tuple(f"0x{f.ip:x}" for f in frames)
        return tuple(("" if f.reliable else "? ") + self.symbols.format(f.ip) for f in frames)


def first_function(stack: tuple[str, ...]) -> str | None:
    """The function a sleeping task waits in: its stack's first sure frame."""
    for line in stack:
        if not line.startswith(("?", "0x")):
            return line.split("+", 1)[0]
    return None
