"""Finding task_structs by walking kernel memory: works on any target.

The kernel keeps every thread group leader on ``init_task.tasks`` and each
process's threads on ``signal->thread_head`` (``thread_group`` before 6.7).
A walk of both, bounded and cycle-checked, gives every task.
"""

from __future__ import annotations

from kpeek.errors import UsageError
from kpeek.kernel.btf import UnknownMember
from kpeek.kernel.lists import DEFAULT_MAX
from kpeek.kernel.objects import Object
from kpeek.kernel.program import Kernel


def init_task(kernel: Kernel) -> Object:
    """The idle task of CPU 0 (``init_task``), from its symbol."""
    return kernel.variable("init_task", "struct task_struct")


def init_task_from(kernel: Kernel, task: int, max_steps: int = 256) -> Object:
    """init_task, reached from any task's address by following ``real_parent``:
    every chain ends at the idle task (pid 0), whose real_parent is itself.
    For kernels whose kallsyms has no data symbols. Raises UsageError."""
    at = kernel.type("struct task_struct").offsetof("real_parent")
    for _ in range(max_steps):
        parent = int.from_bytes(kernel.memory.read(task + at, 8), "little")
        if parent == task:
            return kernel.object("struct task_struct", task)
        task = parent
    raise UsageError(f"no end to the real_parent chain in {kernel.origin}")


def find_init_task(kernel: Kernel, seed: int | None = None) -> Object:
    """init_task by its symbol, else from ``seed`` (a task address), else from
    the kernel's task index (pid 1). Raises UsageError when none is possible."""
    if kernel.symbol_address("init_task") is not None:
        return init_task(kernel)
    if seed is None and kernel.tasks is not None:
        seed = kernel.tasks.address_of(1)
    if seed is None:
        raise UsageError(f"{kernel.origin}: no init_task symbol and no task to start from")
    return init_task_from(kernel, seed)


def thread_addresses(kernel: Kernel, leader: Object) -> list[int]:
    """Addresses of the threads of ``leader``'s process, leader included."""
    try:
        head = leader.member("signal").deref().member("thread_head")
        walk = kernel.list_entries(head, leader.type, "thread_node")
    except UnknownMember:  # before 6.7: a ring through task_struct.thread_group
        ring = kernel.list_entries(leader.member("thread_group"), leader.type, "thread_group")
        return [leader.address, *ring.entries]
    return list(walk.entries) or [leader.address]


def all_task_addresses(kernel: Kernel, start: Object | None = None,
                       max_tasks: int = DEFAULT_MAX) -> list[int]:
    """Every task_struct address: the leaders on ``init_task.tasks``, then their threads.

    ``start`` is init_task (found by symbol when not given). The idle task
    itself comes first.
    """
    first = start if start is not None else init_task(kernel)
    leaders = kernel.list_entries(first.member("tasks"), "struct task_struct", "tasks",
                                  max_entries=max_tasks)
    out = [first.address]
    task_type = first.type  # one lookup: by-name lookups per task add up (BTF index)
    for address in leaders.entries:
        out.extend(thread_addresses(kernel, kernel.object(task_type, address)))
    return out


class WalkedTaskIndex:
    """A :class:`~kpeek.kernel.program.TaskIndex` from one walk of the task list."""

    def __init__(self, kernel: Kernel, start: Object | None = None) -> None:
        self._kernel = kernel
        self._start = start
        self._by_pid: dict[int, int] | None = None

    def addresses(self) -> dict[int, int]:
        """pid -> task_struct address for every task (pid 0: init_task)."""
        if self._by_pid is None:
            pid_at = self._kernel.type("struct task_struct").offsetof("pid")
            by_pid: dict[int, int] = {}
            for address in all_task_addresses(self._kernel, self._start):
                raw = self._kernel.memory.read(address + pid_at, 4)
                by_pid.setdefault(int.from_bytes(raw, "little", signed=True), address)
            self._by_pid = by_pid
        return self._by_pid

    def address_of(self, pid: int) -> int | None:
        return self.addresses().get(pid)
