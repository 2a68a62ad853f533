"""A Snapshot from walking kernel objects in memory: any Kernel, live or a dump.

The task list (``init_task.tasks`` and each process's thread list), pid
numbers and namespaces from ``struct pid``, descriptor tables from
``files_struct``, open files and inodes from ``struct file``, paths from
dentries and mounts. It gives the same model as the procfs and BPF sources
(open-file ids are keyed hashes of struct file addresses, as in the BPF
source), so every view and diagnosis works on a crash dump.

Every walk is bounded and cycle-checked. A read that fails (memory not in
the dump, an object freed under a live walk) skips that task or file and is
counted in the notes; it never stops the snapshot.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from kpeek.errors import UsageError
from kpeek.ids import keyed_id
from kpeek.kernel.fdtable import FileFacts, FileReader
from kpeek.kernel.fs import PathError, PathResolver, read_root
from kpeek.kernel.lists import DEFAULT_MAX
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.program import Kernel
from kpeek.kernel.tasks import find_init_task, thread_addresses
from kpeek.model import FileDescriptor, Inode, OpenFile, Snapshot, Task
from kpeek.sources.filekind import O_CLOEXEC, file_type
from kpeek.sources.memwalk.stacks import StackReader, first_function
from kpeek.sources.memwalk.tasks import TaskReader

SOURCE = "memory"
_SKIPPED = (MemoryReadError, PathError, ValueError)


def take_snapshot(
    kernel: Kernel,
    pids: Iterable[int] | None = None,
    *,
    threads: bool = True,
    files: bool = True,
    stacks: bool = False,
    all_namespaces: bool = False,
    seed: int | None = None,
    root_pid: int | None = None,
    wchan: bool | None = None,
) -> Snapshot:
    """Tasks (and, with ``files``, descriptor tables) of ``pids`` or of all.

    ``pids`` are thread-group ids; one the walk does not find raises
    UsageError. ``seed`` is any task_struct address, for a kernel whose
    symbols do not give init_task. Paths are relative to the root directory
    of ``root_pid`` (default: this process on the live kernel, as /proc
    shows them; pid 1 in a dump). Wait channels come from unwinding each
    sleeper's stack: by default in a dump, or with ``stacks`` (``wchan``
    forces either way; live, /proc and BPF give them for far less).
    """
    unwind = stacks or (not kernel.live if wchan is None else wchan)
    walk = _Walk(kernel)
    addresses = walk.task_addresses(find_init_task(kernel, seed).address)
    wanted = set(pids) if pids is not None else None
    tasks: list[Task] = []
    walk.prefetch([(a, walk.tasks.span) for a in addresses])
    for address in addresses:
        try:
            rt = walk.tasks.read(address)
            if rt.pid == 0 or (wanted is not None and rt.tgid not in wanted):
                continue  # the idle task is no process (/proc does not list it)
            if not threads and rt.pid != rt.tgid:
                continue
            task = walk.tasks.task(rt, all_namespaces)
            tasks.append(walk.with_stack(task, stacks) if unwind else task)
        except _SKIPPED as e:
            walk.skip("task", e)
    if wanted is not None:
        missing = sorted(wanted - {t.tgid for t in tasks})
        if missing:
            raise UsageError(f"no such process in {kernel.origin}: "
                             f"{', '.join(map(str, missing))}")
    tasks.sort(key=lambda t: (t.tgid, t.pid != t.tgid, t.pid))
    if files:
        if root_pid is None:
            root_pid = os.getpid() if kernel.live else 1
        walk.set_root(root_pid, addresses)
        for t in tasks:
            if not t.is_thread and t.address is not None:
                walk.descriptors(t)
    return Snapshot(source=SOURCE, tasks=tuple(tasks), fds=tuple(walk.fds),
                    open_files=walk.open_files, inodes=walk.inodes, notes=tuple(walk.notes_out()))


class _Walk:
    """State of one snapshot: readers, caches, what was seen, what was skipped."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.tasks = TaskReader(kernel)
        self.files = FileReader(kernel)
        self.paths = PathResolver(kernel)
        self.fds: list[FileDescriptor] = []
        self.open_files: dict[str, OpenFile] = {}
        self.inodes: dict[str, Inode] = {}
        self._file_ids: dict[int, str] = {}
        self._stacks: StackReader | None = None
        self.skipped: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}
        self.notes: list[str] = []

    def with_stack(self, task: Task, stacks: bool) -> Task:
        """The task with its wait channel (a sleeper's) and, asked, its stack."""
        if task.state in "RXZ":
            return replace(task, kernel_stack=() if stacks else None)
        if self._stacks is None:
            self._stacks = StackReader(self.kernel)
        try:
            frames = self._stacks.stack(task.address or 0)
        except _SKIPPED as e:
            self.skip("kernel stack", e)
            return task
        return replace(task, wchan=first_function(frames),
                       kernel_stack=frames if stacks else None)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Read many objects in as few round trips as the memory allows (the
        BPF reader batches pages; a dump reads them when asked anyway)."""
        read_many = getattr(self.kernel.memory, "read_many", None)
        if read_many is not None and len(ranges) > 1:
            read_many(ranges)

    def skip(self, what: str, error: Exception) -> None:
        self.skipped[what] += 1
        self.reasons.setdefault(what, str(error))

    def notes_out(self) -> list[str]:
        out = list(self.notes)
        for what, n in self.skipped.items():
            out.append(f"{n} {what}{'s' if n != 1 else ''} skipped: kernel memory not readable "
                       f"or inconsistent (first: {self.reasons[what]})")
        if self.paths.approximated:
            out.append(f"{self.paths.approximated} pseudo-file names approximated "
                       "(their file system's d_dname is not known to kpeek)")
        return out

    def task_addresses(self, init_task: int) -> list[int]:
        """init_task, every process leader on its ``tasks`` list, and their threads."""
        k = self.kernel
        head = init_task + self.tasks.tasks_at
        if k.live:  # the list moves while we read it: follow next pointers, do not judge
            leaders = _follow(k, head)
        else:
            walk = k.list_entries(head, max_entries=DEFAULT_MAX)
            if walk.finding is not None:
                self.notes.append(f"task list walk stopped early: {walk.finding.message}")
            leaders = walk.entries
        out = [init_task]
        for node in leaders:
            leader = node - self.tasks.tasks_at
            try:
                out.extend(thread_addresses(k, k.object("struct task_struct", leader)))
            except _SKIPPED as e:
                self.skip("thread list", e)
                out.append(leader)
        return list(dict.fromkeys(out))

    def set_root(self, root_pid: int, addresses: list[int]) -> None:
        """Resolve paths relative to ``root_pid``'s root directory (else the mount tree's top)."""
        for address in addresses:
            try:
                rt = self.tasks.read(address)
                if rt.pid == root_pid and rt.fs:
                    self.paths.root = read_root(self.kernel, rt.fs)
                    return
            except _SKIPPED:
                continue
        self.notes.append(f"pid {root_pid} not found: paths go up to the top of the mount tree")

    def descriptors(self, task: Task) -> None:
        rt = self.tasks.read(task.address or 0)
        if not rt.files:
            return  # a zombie, or a kernel thread with no table
        try:
            table = self.files.table(rt.files)
        except _SKIPPED as e:
            self.skip("descriptor table", e)
            return
        self.prefetch([(file, self.files.file_span) for _, file, _ in table
                       if file not in self._file_ids])
        for fd, file, cloexec in table:
            file_id = self._file_ids.get(file)
            if file_id is None:
                try:
                    file_id = self._open_file(file)
                except _SKIPPED as e:
                    self.skip("open file", e)
                    continue
            self.fds.append(FileDescriptor(task.tgid, fd, cloexec, file_id))

    def _open_file(self, address: int) -> str:
        facts = self.files.file(address)
        path = self.paths.path(facts.vfsmount, facts.dentry, facts.ino)
        inode_id = f"{facts.s_dev >> 20}:{facts.s_dev & 0xFFFFF}:{facts.ino}"
        file_id = keyed_id("ptr", address)  # as the BPF source (filemodel.OpenFile)
        self.open_files[file_id] = OpenFile(
            id=file_id, inode=inode_id, path=path, pos=facts.pos,
            flags=facts.flags & ~O_CLOEXEC, mnt_id=self.paths.mnt_id(facts.vfsmount),
            refcount=facts.refcount, f_mode=facts.f_mode, address=address,
        )  # fmt: skip
        if inode_id not in self.inodes:
            self.inodes[inode_id] = _inode(inode_id, facts, path)
        self._file_ids[address] = file_id
        return file_id


def _inode(inode_id: str, facts: FileFacts, path: str) -> Inode:
    return Inode(id=inode_id, dev=os.makedev(facts.s_dev >> 20, facts.s_dev & 0xFFFFF),
                 ino=facts.ino, type=file_type(facts.i_mode, path), nlink=facts.nlink,
                 size=facts.size, address=facts.inode)


def _follow(kernel: Kernel, head: int, bound: int = DEFAULT_MAX) -> list[int]:
    """The nodes of a live list_head list by next pointers alone (bounded,
    cycle-checked): a task that forks or exits meanwhile breaks back-links,
    and a strict walk would stop there and lose every task after it."""
    nodes: list[int] = []
    seen = {head}
    try:
        node = int.from_bytes(kernel.memory.read(head, 8), "little")
        while node not in seen and node and len(nodes) < bound:
            seen.add(node)
            nodes.append(node)
            node = int.from_bytes(kernel.memory.read(node, 8), "little")
    except MemoryReadError:
        pass  # an entry freed under us: what came before it is still good
    return nodes
