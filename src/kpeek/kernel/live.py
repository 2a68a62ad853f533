"""The live kernel as one Python object: types, symbols and memory.

    from kpeek.kernel import open_live
    k = open_live()
    task = k.task(1)
    task.member("comm").value()                      # 'systemd'
    walk = k.list_entries(task.member("children"), "struct task_struct", "sibling")
    [k.object("struct task_struct", a).member("pid").value() for a in walk.entries]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kpeek.errors import NotPermitted, UsageError
from kpeek.kernel.btf import Btf, Type, load_vmlinux_btf
from kpeek.kernel.lists import DEFAULT_MAX, ListWalk, walk_hlist, walk_list
from kpeek.kernel.memory import KernelMemory
from kpeek.kernel.objects import Object, as_type, container_of
from kpeek.kernel.symbols import Kallsyms, load_kallsyms
from kpeek.sources.proc_tasks import Vanished, list_pids, parse_stat, parse_status, read_bytes


@dataclass
class Kernel:
    """A kernel to look at: its BTF ``types``, its ``symbols`` and its ``memory``."""

    types: Btf
    symbols: Kallsyms | None
    memory: KernelMemory

    def type(self, name: str) -> Type:
        """A type by name ("struct file", "pid_t"); raises UnknownType."""
        return self.types.lookup(name)

    def object(self, type_or_name: Type | str, address: int) -> Object:
        """The object of that type at ``address`` (nothing is read yet)."""
        return Object(as_type(self.types, type_or_name), address, self.memory)

    def container_of(self, ptr: Object | int, type_or_name: Type | str, member: str) -> Object:
        """The ``type`` object whose member path ``member`` is at ``ptr``."""
        return container_of(ptr, type_or_name, member, self.memory, self.types)

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

    def task(self, pid: int) -> Object:
        """The ``struct task_struct`` of thread ``pid`` (raises UsageError if none).

        Uses the BPF task iterator; a task it does not list (seen for pid 1
        in some sandboxes) is found through a sibling thread's or a child's
        task_struct instead.
        """
        from kpeek.sources.bpf.tasks import task_addresses

        addresses = task_addresses()
        if pid in addresses:
            return self.object("struct task_struct", addresses[pid])
        if not os.path.exists(f"/proc/{pid}"):
            raise UsageError(f"no task with pid {pid}")
        for via in _relatives(pid):
            if via not in addresses:
                continue
            other = self.object("struct task_struct", addresses[via])
            for path in ("group_leader", "real_parent"):
                leader = other.member(path).deref().member("group_leader").deref()
                found = self._thread_of(leader, pid)
                if found is not None:
                    return found
        raise UsageError(f"task {pid} exists in /proc but its task_struct was not found")

    def _thread_of(self, leader: Object, pid: int) -> Object | None:
        if leader.member("pid").value() == pid:
            return leader
        walk = self.list_entries(leader.member("signal").deref().member("thread_head"),
                                 "struct task_struct", "thread_node")
        for address in walk.entries:
            task = self.object("struct task_struct", address)
            if task.member("pid").value() == pid:
                return task
        return None


def _relatives(pid: int) -> list[int]:
    """Threads of pid's process, then tasks whose parent is that process (from /proc)."""
    out: list[int] = []
    tgid = pid
    try:
        tgid = int(parse_status(read_bytes(f"/proc/{pid}/status"))[b"Tgid"])
        out += list_pids(f"/proc/{tgid}/task")
    except (Vanished, OSError, KeyError, ValueError):
        pass
    for entry in list_pids():
        try:
            _, fields = parse_stat(read_bytes(f"/proc/{entry}/stat"))
            if int(fields[1]) == tgid:  # fields[1] is the ppid
                out.append(entry)
        except (Vanished, OSError, ValueError):
            continue
    return out


def require_root(what: str) -> None:
    """Raise NotPermitted unless running as root (raw kernel addresses are root-only)."""
    if os.geteuid() != 0:
        raise NotPermitted(
            f"{what} needs root: it shows kernel addresses (which defeat KASLR) "
            "and reads kernel memory through BPF; run kpeek as root"
        )


def open_live(*, symbols: bool = True) -> Kernel:
    """The running kernel: BTF from /sys/kernel/btf/vmlinux, /proc/kallsyms,
    memory through the BPF reader.

    Raises NotPermitted (not root) or NotSupported (no BTF, BPF will not load).
    """
    require_root("opening the live kernel")
    from kpeek.sources.bpf.reader import BpfKernelMemory

    return Kernel(load_vmlinux_btf(), load_kallsyms() if symbols else None, BpfKernelMemory())


_default_memory: KernelMemory | None = None


def default_memory() -> KernelMemory:
    """The live kernel's memory (BPF reader), opened on first use.

    The reader caches the pages it read; call ``.clear_cache()`` on it to
    look again at a kernel that has moved on. Raises NotPermitted (not
    root) or NotSupported (BPF will not load).
    """
    global _default_memory
    if _default_memory is None:
        require_root("reading live kernel memory")
        from kpeek.sources.bpf.reader import BpfKernelMemory

        _default_memory = BpfKernelMemory()
    return _default_memory


def parse_address(text: str, symbols: Kallsyms | None = None) -> int:
    """An address from the command line: hex (with or without 0x), a symbol
    name, or a sum/difference of those ("do_sys_openat2+0x10", "0xffff...+8").

    Bare numbers are hex, as in crash. Raises UsageError for anything else.
    """
    s = text.strip()
    if not s:
        raise UsageError("empty address")
    total = 0
    sign = 1
    token = ""
    for ch in s + "+":
        if ch in "+-" and token:
            total += sign * _address_term(token.strip(), symbols, text)
            sign = 1 if ch == "+" else -1
            token = ""
        elif ch in "+-":
            raise UsageError(f"bad address {text!r}")
        else:
            token += ch
    if not 0 <= total < 1 << 64:
        raise UsageError(f"address {text!r} is outside the 64-bit address space")
    return total


def _address_term(term: str, symbols: Kallsyms | None, whole: str) -> int:
    digits = term[2:] if term.lower().startswith("0x") else term
    if digits and all(c in "0123456789abcdefABCDEF" for c in digits):
        # A word like "bad" is both hex and maybe a symbol; the symbol wins
        # only when written without 0x and the symbol exists.
        if symbols is not None and not term.lower().startswith("0x"):
            addr = symbols.address_of(term)
            if addr is not None:
                return addr
        return int(digits, 16)
    if symbols is not None:
        addr = symbols.address_of(term)
        if addr is not None:
            return addr
        raise UsageError(f"bad address {whole!r}: no kernel symbol named {term!r}")
    raise UsageError(f"bad address {whole!r}: not a hex number")
