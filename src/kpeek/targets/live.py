"""The running kernel as a :class:`~kpeek.kernel.program.Kernel`.

Types from /sys/kernel/btf/vmlinux, symbols from /proc/kallsyms, memory
through the BPF reader (bpf_probe_read_kernel: a bad address is an error,
never a crash), tasks from the BPF task iterator.
"""

from __future__ import annotations

import os

from kpeek.errors import NotPermitted, NotSupported, os_reason

# Imported where used: kpeek sym asks this module for require_root alone.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kpeek.kernel.program import Kernel


def require_root(what: str) -> None:
    """Raise NotPermitted unless running as root (raw kernel addresses are root-only)."""
    if os.geteuid() != 0:
        raise NotPermitted(
            f"{what} needs root: it shows kernel addresses (which defeat KASLR) "
            "and reads kernel memory through BPF; run kpeek as root"
        )


class LiveTaskIndex:
    """Task addresses from one BPF iter/task run, plus tasks the iterator hides.

    A task the iterator does not list (seen for pid 1 in some sandboxes) is
    found through a sibling thread's or a child's task_struct.
    """

    def __init__(self, kernel: Kernel) -> None:
        from kpeek.sources.bpf.tasks import task_addresses

        self._kernel = kernel
        self.by_pid = task_addresses()

    def address_of(self, pid: int) -> int | None:
        if pid in self.by_pid:
            return self.by_pid[pid]
        if not os.path.exists(f"/proc/{pid}"):
            return None
        k = self._kernel
        for via in _relatives(pid):
            if via not in self.by_pid:
                continue
            other = k.object("struct task_struct", self.by_pid[via])
            for path in ("group_leader", "real_parent"):
                leader = other.member(path).deref().member("group_leader").deref()
                found = _thread_of(k, leader, pid)
                if found is not None:
                    return found
        return None


def _thread_of(k: Kernel, leader, pid: int) -> int | None:
    from kpeek.kernel.tasks import thread_addresses

    for address in thread_addresses(k, leader):
        if k.object("struct task_struct", address).member("pid").value() == pid:
            return address
    return None


def _relatives(pid: int) -> list[int]:
    """Threads of pid's process, then tasks whose parent is that process (from /proc)."""
    from kpeek.sources.proc_tasks import Vanished, list_pids, parse_stat, parse_status, read_bytes

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


class _LazyTasks:
    """Runs the BPF task iterator only when a task is first asked for."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._index: LiveTaskIndex | None = None

    def address_of(self, pid: int) -> int | None:
        if self._index is None:
            self._index = LiveTaskIndex(self._kernel)
        return self._index.address_of(pid)

    def forget(self) -> None:
        """Run the iterator again when a task is next asked for (Kernel.reread)."""
        self._index = None


def open_live(*, symbols: bool = True) -> Kernel:
    """The running kernel. Raises NotPermitted (not root) or NotSupported
    (no BTF, BPF will not load)."""
    require_root("opening the live kernel")
    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.kernel.program import Kernel
    from kpeek.kernel.symbols import load_kallsyms
    from kpeek.sources.bpf.reader import BpfKernelMemory

    try:
        memory = BpfKernelMemory()
    except OSError as e:  # an unusable cache folder for the reader's BPF object
        raise NotSupported(f"the BPF memory reader could not be prepared ({os_reason(e)}); "
                           "set XDG_CACHE_HOME to a folder you own") from None
    kernel = Kernel(load_vmlinux_btf(), load_kallsyms() if symbols else None, memory)
    kernel.tasks = _LazyTasks(kernel)
    return kernel
