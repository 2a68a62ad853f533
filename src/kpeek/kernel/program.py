"""A kernel to look at, over any memory: types, symbols, memory and its tasks.

    k = targets.open_kernel(args)          # live (BPF reader) or a dump (-c FILE)
    task = k.task(1)
    task.member("comm").value()            # 'systemd'
    walk = k.list_entries(task.member("children"), "struct task_struct", "sibling")

Nothing here knows where the memory comes from: the live kernel, a crash dump
and synthetic test memory are all a :class:`~kpeek.kernel.memory.KernelMemory`.
Openers for each live in :mod:`kpeek.targets`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Protocol

from kpeek.errors import UsageError
from kpeek.kernel.btf import Btf, Type
from kpeek.kernel.lists import DEFAULT_MAX, ListWalk, walk_hlist, walk_list
from kpeek.kernel.memory import KernelMemory
from kpeek.kernel.objects import Object, as_type, container_of
from kpeek.kernel.symbols import Kallsyms
from kpeek.records import record


class TaskIndex(Protocol):
    """Where each task_struct lives, as the target can best tell."""

    def address_of(self, pid: int) -> int | None:
        """The task_struct address of thread ``pid`` (global pid), or None."""
        ...


@record
class Kernel:
    """A kernel: its BTF ``types``, its ``symbols`` and its ``memory``.

    ``tasks`` finds task_structs by pid (a BPF iterator live, a walk of
    ``init_task.tasks`` in a dump). ``live`` says whether memory may change
    between two reads; ``origin`` names the target for messages.
    """

    types: Btf
    symbols: Kallsyms | None
    memory: KernelMemory
    tasks: TaskIndex | None = None
    live: bool = True
    origin: str = "the live kernel"
    notes: list[str] = field(default_factory=list)

    def type(self, name: str) -> Type:
        """A type by name ("struct file", "pid_t"); raises UnknownType."""
        return self.types.lookup(name)

    def object(self, type_or_name: Type | str, address: int) -> Object:
        """The object of that type at ``address`` (nothing is read yet)."""
        return Object(as_type(self.types, type_or_name), address, self.memory)

    def container_of(self, ptr: Object | int, type_or_name: Type | str, member: str) -> Object:
        """The ``type`` object whose member path ``member`` is at ``ptr``."""
        return container_of(ptr, type_or_name, member, self.memory, self.types)

    def symbol_address(self, name: str) -> int | None:
        """The address of kernel symbol ``name``, or None where it is not known."""
        return self.symbols.address_of(name) if self.symbols is not None else None

    def variable(self, name: str, type_or_name: Type | str) -> Object:
        """The global ``name`` as an object of the given type; UsageError if unknown."""
        address = self.symbol_address(name)
        if address is None:
            raise UsageError(f"{self.origin} has no symbol {name!r} "
                             "(kallsyms without data symbols?)")
        return self.object(type_or_name, address)

    def list_entries(
        self,
        head: Object | int,
        type_or_name: Type | str | None = None,
        member: str | None = None,
        *,
        hlist: bool = False,
        max_entries: int = DEFAULT_MAX,
    ) -> ListWalk:
        """Walk the list whose head is ``head`` (an address or a list_head Object).

        With ``type_or_name`` and ``member`` (the entry's list node member),
        ``walk.entries`` are the entries' addresses. Integrity findings are in
        ``walk.finding``; see :mod:`kpeek.kernel.lists`.
        """
        address = head.address_of() if isinstance(head, Object) else head
        offset = 0
        if type_or_name is not None:
            if member is None:
                raise UsageError("list_entries: a member name is needed with an entry type")
            offset = as_type(self.types, type_or_name).resolve().offsetof(member)
        walker = walk_hlist if hlist else walk_list
        return walker(self.memory, address, entry_offset=offset, max_entries=max_entries)

    def reread(self) -> None:
        """Forget cached memory and where tasks were, so the next reads see a
        live kernel as it is now (a pid may have been reused since)."""
        for forget in (getattr(self.memory, "clear_cache", None),
                       getattr(self.tasks, "forget", None)):
            if forget is not None:
                forget()

    def task(self, pid: int) -> Object:
        """The ``struct task_struct`` of thread ``pid`` (UsageError if none)."""
        if self.tasks is None:
            raise UsageError(f"{self.origin}: tasks cannot be found (no task index)")
        address = self.tasks.address_of(pid)
        if address is None:
            raise UsageError(f"no task with pid {pid} in {self.origin}")
        return self.object("struct task_struct", address)
