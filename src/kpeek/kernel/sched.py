"""Task states as the kernel reports them (``task_state_index``).

The bits are #defines in include/linux/sched.h (BTF cannot carry them);
the encoding below holds from 6.1 on (TASK_FROZEN came with 6.1's freezer
rewrite), the kernels kpeek reads.
"""

from __future__ import annotations

from kpeek.model import Task

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up

if TYPE_CHECKING:  # the BPF source needs state_letter only, not the kernel layer
    from kpeek.kernel.program import Kernel

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


class RunqueueClock:
    """How long a task has been off its CPU, from the kernel's own clocks in memory.

    ``se.exec_start`` is the task clock of the CPU it last ran on when it
    stopped running; that CPU's ``rq->clock_task`` is the same clock "now"
    (at the dump). An idle CPU's runqueue clock stops being updated, so it is
    moved on by how far the most recent runqueue clock (``rq->clock``, one
    time base on all CPUs) is ahead of its own. Needs the data symbols
    ``runqueues`` and ``__per_cpu_offset`` (kallsyms with KALLSYMS_ALL, as
    in dumps of distribution kernels); without them ``usable`` is False.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.now: dict[int, int] = {}  # cpu -> its task clock now (ns)
        self.latest_ns = 0  # the most recent runqueue clock: time since boot (ns)
        runqueues = kernel.symbol_address("runqueues")
        offsets = kernel.symbol_address("__per_cpu_offset")
        nr = kernel.symbol_address("nr_cpu_ids")
        if runqueues is None or offsets is None:
            return
        from kpeek.kernel.layout import Layout

        rq = Layout(kernel.types, "struct rq")
        self._task = Layout(kernel.types, "struct task_struct")
        self._cpu = self._task.first("cpu", "thread_info.cpu")
        count = int.from_bytes(kernel.memory.read(nr, 4), "little") if nr is not None else 1
        clocks: dict[int, tuple[int, int]] = {}
        for cpu in range(min(count, 8192)):
            base = int.from_bytes(kernel.memory.read(offsets + 8 * cpu, 8), "little")
            raw = kernel.memory.read(runqueues + base, rq.span("clock", "clock_task"))
            clocks[cpu] = (rq.int(raw, "clock"), rq.int(raw, "clock_task"))
        latest = self.latest_ns = max(clock for clock, _ in clocks.values())
        self.now = {cpu: task + (latest - clock) for cpu, (clock, task) in clocks.items()}

    @property
    def usable(self) -> bool:
        return bool(self.now)

    def asleep_seconds(self, task: Task) -> float | None:
        """Seconds since the model Task ``task`` last ran; None when unknown."""
        if not self.now or task.address is None:
            return None
        raw = self.kernel.memory.read(task.address, self._task.span(self._cpu, "se.exec_start"))
        now = self.now.get(self._task.int(raw, self._cpu))
        if now is None:
            return None
        return max(0.0, (now - self._task.int(raw, "se.exec_start")) / 1e9)
