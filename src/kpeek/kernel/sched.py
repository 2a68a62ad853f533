"""Task states as the kernel reports them (``task_state_index``).

The bits are #defines in include/linux/sched.h (BTF cannot carry them);
the encoding below holds from 6.1 on (TASK_FROZEN came with 6.1's freezer
rewrite), the kernels kpeek reads.
"""

from __future__ import annotations

TASK_REPORT = 0x7F
TASK_IDLE = 0x0402  # TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_RTLOCK_WAIT = 0x1000
TASK_FROZEN = 0x8000
STATE_LETTERS = "RSDTtXZPI"


def state_letter(state: int, exit_state: int) -> str:
    """The one-letter state /proc shows for ``__state`` and ``exit_state``
    (the kernel's task_state_index)."""
    bits = (state | exit_state) & TASK_REPORT
    if state & TASK_IDLE == TASK_IDLE:
        bits = 0x80
    if state & (TASK_RTLOCK_WAIT | TASK_FROZEN):
        bits = 0x2
    return STATE_LETTERS[bits.bit_length()]
