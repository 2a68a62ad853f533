"""Wait edges from kernel sleeping locks: mutex, rw_semaphore, semaphore.

Needs kernel memory (the BPF reader) and BTF. For each task in D state:

1. ``task_struct.blocker`` (hung-task blocker tracking), where set, holds the
   lock's address with the lock type in its low bits.
2. Otherwise the waiter record (``struct rwsem_waiter``, ``mutex_waiter``,
   ``semaphore_waiter``: a list node, then the task pointer) sits on the
   sleeping task's own kernel stack. We scan the stack area for a word equal
   to the task's own address, take the list node before it, and walk that
   circular list (bounded): the one node that is not another task's waiter
   record is the lock's ``wait_list``; container_of gives the lock.

Every lock found is confirmed by walking its wait_list and finding our
waiter in it (for the stack scan that walk is how the lock is found).
The holder comes from the owner word (flag bits masked); a reader-owned
rwsem, a mutex whose owner word holds only flag bits, and a semaphore
(which has no owner) have no single holder, and we say so. An
rwsem that is an inode's i_rwsem is named by the inode's path. Struct
offsets come from BTF; the flag masks below are #defines in the kernel
(kernel/locking/rwsem.c, mutex.h, hung_task.h), which BTF cannot carry.
"""

from __future__ import annotations

import os

from kpeek.diagnose.fdindex import index_of
from kpeek.diagnose.graph import WaitEdge, WaitGraph, task_node
from kpeek.kernel.program import Kernel
from kpeek.model import Task
from kpeek.records import record

RWSEM_READER_OWNED = 1 << 0  # kernel/locking/rwsem.c
RWSEM_OWNER_FLAGS_MASK = 0x3
MUTEX_FLAGS = 0x07  # MUTEX_FLAG_WAITERS | HANDOFF | PICKUP
MUTEX_FLAG_WAITERS = 0x01  # kernel/locking/mutex.h: set while the wait_list is not empty
RWSEM_FLAG_WAITERS = 1 << 1  # kernel/locking/rwsem.c: the same, in the count
BLOCKER_TYPE_MASK = 0x03  # include/linux/hung_task.h
BLOCKER_TYPES = {0: "mutex", 1: "semaphore", 2: "rwsem", 3: "rwsem"}
THREAD_SIZE = 16384  # x86-64 and arm64 without KASAN; doubled if the saved sp says so
MAX_LIST = 256
MAX_TASKS = 512
# The kernel half of x86-64 with 5-level paging (LA57: the direct map at
# 0xff11..., vmalloc at 0xffa0...); with 4 levels it starts at 0xffff8...
KERNEL_MIN = 0xFF00000000000000

LOCK_TYPES = {"mutex": "struct mutex", "rwsem": "struct rw_semaphore",
              "semaphore": "struct semaphore"}
WAITER_TYPES = {"mutex": "struct mutex_waiter", "rwsem": "struct rwsem_waiter",
                "semaphore": "struct semaphore_waiter"}
LOCK_NAMES = {"mutex": "mutex", "rwsem": "rw_semaphore", "semaphore": "semaphore"}
# Stack frames whose rwsem is the i_rwsem of the inode they work on.
INODE_LOCK_CALLERS = ("do_truncate", "fuse_file_write_iter", "generic_file_write_iter",
                      "ext4_buffered_write_iter", "ext4_file_write_iter", "do_unlinkat",
                      "lookup_slow", "open_last_lookups", "filename_create", "vfs_rename",
                      "lock_rename", "chmod_common", "chown_common", "vfs_fallocate",
                      "iterate_dir", "do_rmdir", "fuse_setattr", "shmem_file_write_iter",
                      "btrfs_do_write_iter", "xfs_ilock", "notify_change")


@record(frozen=True, slots=True)
class LockWait:
    """What :func:`find_lock_wait` learned about one sleeping task."""

    kind: str  # mutex rwsem semaphore
    lock: int  # the lock's address
    holder: int | None  # task_struct address of the single holder
    how: str  # "blocker" or "stack"
    no_holder: str | None = None  # why there is no single holder
    waiters: int = 1


def _u64(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off:off + 8], "little")


def _is_kernel(addr: int) -> bool:
    return addr >= KERNEL_MIN


class LockReader:
    """Reads lock structures through a KernelMemory with BTF offsets."""

    def __init__(self, memory, btf, task_addrs: dict[int, int]) -> None:
        self.mem = memory
        self.btf = btf
        self.tasks = task_addrs
        self.by_address = {a: tid for tid, a in task_addrs.items()}
        ts = btf.lookup("struct task_struct")
        self.off_stack = ts.offsetof("stack")
        self.off_blocker = _maybe_offset(ts, "blocker")
        self.off_sp = _maybe_offset(ts, "thread.sp")
        self.lock_wait_list = {k: btf.lookup(t).offsetof("wait_list")
                               for k, t in LOCK_TYPES.items()}
        self.waiter_task = {k: btf.lookup(t).offsetof("task") - btf.lookup(t).offsetof("list")
                            for k, t in WAITER_TYPES.items()}
        self.rwsem_owner = btf.lookup("struct rw_semaphore").offsetof("owner")
        self.rwsem_count = btf.lookup("struct rw_semaphore").offsetof("count")
        self.mutex_owner = btf.lookup("struct mutex").offsetof("owner")
        self.sem_count = btf.lookup("struct semaphore").offsetof("count")
        sem = btf.lookup("struct semaphore")
        self.sem_last = _maybe_offset(sem, "last_holder")
        rw_waiter = btf.lookup("struct rwsem_waiter")
        self.rw_waiter_timeout = rw_waiter.offsetof("timeout") - rw_waiter.offsetof("list")

    def word(self, addr: int) -> int:
        return _u64(self.mem.read(addr, 8), 0)

    # -- the wait list ----------------------------------------------------
    def walk(self, start: int) -> list[int]:
        """The circular list through ``start`` (node addresses, start first)."""
        nodes = [start]
        node = self.word(start)
        while node != start:
            if not _is_kernel(node) or node in nodes or len(nodes) > MAX_LIST:
                raise ValueError("not a well-formed list")
            nodes.append(node)
            node = self.word(node)
        return nodes

    def find_head(self, node: int, task_off: int) -> tuple[int, int]:
        """(wait_list head address, number of waiters) for the list through a
        waiter record's list node: the head is the node that is not a
        record whose task pointer is a live task."""
        nodes = self.walk(node)
        heads = [n for n in nodes if self.word(n + task_off) not in self.by_address]
        if len(heads) != 1:
            raise ValueError("no single list head")
        return heads[0], len(nodes) - 1

    def confirm(self, kind: str, lock: int, task_addr: int) -> int | None:
        """Number of waiters when ``lock``'s wait_list holds a waiter record
        for ``task_addr``; None when it does not (or is unreadable)."""
        try:
            nodes = self.walk(lock + self.lock_wait_list[kind])
            tasks = [self.word(n + self.waiter_task[kind]) for n in nodes[1:]]
        except Exception:  # MemoryReadError or a malformed list
            return None
        return len(tasks) if task_addr in tasks else None

    # -- per task -----------------------------------------------------------
    def stack_words(self, task_addr: int) -> tuple[int, bytes]:
        base = self.word(task_addr + self.off_stack)
        size = THREAD_SIZE
        if self.off_sp is not None:
            sp = self.word(task_addr + self.off_sp)
            if base <= sp < base + 4 * THREAD_SIZE:
                while sp >= base + size:
                    size *= 2
        return base, self.mem.read(base, size)

    def from_stack(self, task_addr: int) -> tuple[str, int, int] | None:
        """(kind guess, lock address, waiters) from a waiter record on the stack."""
        base, raw = self.stack_words(task_addr)
        needle = task_addr.to_bytes(8, "little")
        pos = raw.find(needle)
        while pos >= 0:
            if pos % 8 == 0:
                found = self._record_at(base + pos)
                if found:
                    return found
            pos = raw.find(needle, pos + 1)
        return None

    def _record_at(self, task_word: int) -> tuple[str, int, int] | None:
        off = self.waiter_task["mutex"]  # list then task: the same in all three
        node = task_word - off
        try:
            nxt, prev = self.word(node), self.word(node + 8)
            if not (_is_kernel(nxt) and _is_kernel(prev)):
                return None
            head, waiters = self.find_head(node, off)
        except (ValueError, OSError, Exception):  # MemoryReadError and malformed lists
            return None
        kind = self._classify(node, head)
        if kind is None:
            return None
        return kind, head - self.lock_wait_list[kind], waiters

    def _classify(self, node: int, head: int) -> str | None:
        """Which lock type owns ``head``. A lock with waiters says so in its
        own words: a mutex's owner word has MUTEX_FLAG_WAITERS, an rwsem's
        count has RWSEM_FLAG_WAITERS, and a holder there is a known task.
        Where both readings fit, an rwsem waiter carries a jiffies timeout
        (the word at that offset is past a mutex_waiter, so only a tie-break:
        on 6.1 it is whatever the stack holds); a semaphore is neither."""
        as_mutex = self._fits_mutex(head)
        as_rwsem = self._fits_rwsem(head)
        if as_mutex != as_rwsem:
            return "mutex" if as_mutex else "rwsem"
        timeout = self.word(node + self.rw_waiter_timeout)
        if timeout and not _is_kernel(timeout):
            return "rwsem"
        mutex_owner = self.word(head - self.lock_wait_list["mutex"] + self.mutex_owner)
        if mutex_owner & ~MUTEX_FLAGS and (mutex_owner & ~MUTEX_FLAGS) in self.by_address:
            return "mutex"
        if mutex_owner & MUTEX_FLAGS and not mutex_owner & ~MUTEX_FLAGS:
            return "mutex"
        return "semaphore"

    def _fits_mutex(self, head: int) -> bool:
        owner = self.word(head - self.lock_wait_list["mutex"] + self.mutex_owner)
        task = owner & ~MUTEX_FLAGS
        return bool(owner & MUTEX_FLAG_WAITERS) and (not task or task in self.by_address)

    def _fits_rwsem(self, head: int) -> bool:
        lock = head - self.lock_wait_list["rwsem"]
        count, owner = self.word(lock + self.rwsem_count), self.word(lock + self.rwsem_owner)
        task = owner & ~RWSEM_OWNER_FLAGS_MASK
        return bool(count & RWSEM_FLAG_WAITERS) and (
            bool(owner & RWSEM_READER_OWNED) or not task or task in self.by_address)

    def holder(self, kind: str, lock: int) -> tuple[int | None, str | None]:
        """(holder task address, or None and why there is no single holder)."""
        if kind == "rwsem":
            owner = self.word(lock + self.rwsem_owner)
            if owner & RWSEM_READER_OWNED:
                return None, "held by readers: an rwsem shared by readers has no single holder"
            task = owner & ~RWSEM_OWNER_FLAGS_MASK
            if not task:
                return None, "no writer recorded in its owner word (being handed over)"
            return task, None
        if kind == "mutex":
            owner = self.word(lock + self.mutex_owner)
            task = owner & ~MUTEX_FLAGS
            if not task:
                return None, "its owner word holds only flag bits: no single holder"
            return task, None
        last = self.word(lock + self.sem_last) if self.sem_last is not None else 0
        why = "a semaphore has no owner"
        if last and last in self.by_address:
            why += f"; last taken by tid {self.by_address[last]}"
        return None, why

    def find_lock_wait(self, task: Task) -> LockWait | None:
        addr = self.tasks.get(task.pid)
        if addr is None:
            return None
        if self.off_blocker is not None:
            blocker = self.word(addr + self.off_blocker)
            lock = blocker & ~BLOCKER_TYPE_MASK
            # The type codes are #defines (not in BTF) and changed between
            # kernels: trust the one whose wait_list really holds this task.
            stated = BLOCKER_TYPES.get(blocker & BLOCKER_TYPE_MASK, "mutex")
            for kind in (stated, *(k for k in LOCK_TYPES if k != stated)):
                waiters = self.confirm(kind, lock, addr) if lock else None
                if waiters:
                    holder, why = self.holder(kind, lock)
                    return LockWait(kind, lock, holder, "blocker", why, waiters)
        found = self.from_stack(addr)
        if found is None:
            return None
        kind, lock, waiters = found
        holder, why = self.holder(kind, lock)
        return LockWait(kind, lock, holder, "stack", why, waiters)

    def inode_of(self, lock: int) -> tuple[str, int] | None:
        """("major:minor:ino", i_ino) when ``lock`` is an inode's i_rwsem."""
        inode_t = self.btf.lookup("struct inode")
        inode = lock - inode_t.offsetof("i_rwsem")
        try:
            ino = self.word(inode + inode_t.offsetof("i_ino"))
            sb = self.word(inode + inode_t.offsetof("i_sb"))
            if not _is_kernel(sb):
                return None
            s_dev = int.from_bytes(self.mem.read(
                sb + self.btf.lookup("struct super_block").offsetof("s_dev"), 4), "little")
        except Exception:
            return None
        return f"{s_dev >> 20}:{s_dev & 0xFFFFF}:{ino}", ino


def _maybe_offset(t, path: str) -> int | None:
    try:
        return t.offsetof(path)
    except Exception:
        return None


def kernel_lock_edges(graph: WaitGraph, kernel: Kernel | None = None) -> None:
    """Add an edge for every D-state task sleeping on a kernel lock: in
    ``kernel``'s memory (a dump's) when given, else in the live kernel's."""
    sleepers = [t for t in graph.snapshot.tasks if t.state == "D"][:MAX_TASKS]
    if not sleepers:
        return
    if kernel is not None:
        addresses = {t.pid: t.address for t in graph.snapshot.tasks if t.address is not None}
        reader = LockReader(kernel.memory, kernel.types, addresses)
    else:
        reader = _live_reader(graph, len(sleepers))
        if reader is None:
            return
    graph.kernel_memory_read = True
    for t in sleepers:
        try:
            wait = reader.find_lock_wait(t)
        except Exception:
            wait = None
        if wait is None:
            continue
        graph.add(_edge(graph, reader, t, wait))


def _live_reader(graph: WaitGraph, sleepers: int) -> LockReader | None:
    try:
        from kpeek.sources.bpf.lock_layout import lock_layout
        from kpeek.sources.bpf.reader import BpfKernelMemory
        from kpeek.sources.bpf.tasks import task_addresses

        if os.geteuid() != 0:
            raise PermissionError("not root")
        # The offsets from CO-RE (no BTF parsed in Python), memory via the BPF reader.
        return LockReader(BpfKernelMemory(), lock_layout(), task_addresses())
    except Exception as e:  # any failure to load BPF: say what is unseen, go on
        graph.notes.append(
            f"kernel memory not readable ({e}): the kernel locks (mutex, rwsem, semaphore) "
            f"that {sleepers} D-state task(s) sleep on are not seen; run as root "
            "on a kernel with BPF and BTF")
        return None


def _edge(graph: WaitGraph, reader: LockReader, t: Task, wait: LockWait) -> WaitEdge:
    from kpeek.ids import show_pointer

    name = LOCK_NAMES[wait.kind]
    resource = f"the {name} at {show_pointer(wait.lock)}"
    path = None
    if wait.kind == "rwsem":
        inode = reader.inode_of(wait.lock)
        frames = t.kernel_stack or ()
        known = inode and inode[0] in graph.snapshot.inodes
        by_frame = any(f.startswith(INODE_LOCK_CALLERS) for f in frames[:4])
        if inode and (known or by_frame):
            path = index_of(graph.snapshot).path_of_inode(inode[0])
            resource = f"the i_rwsem of {path or 'inode ' + inode[0]}"
    holder = None
    if wait.holder is not None:
        tid = reader.by_address.get(wait.holder)
        holder = task_node(tid) if tid is not None else None
    note = wait.no_holder
    if wait.holder is not None and holder is None:
        note = "its holder is a task that is gone or not in the snapshot"
    detail = f"{wait.waiters} waiter{'s' if wait.waiters != 1 else ''}" if wait.waiters > 1 \
        else None
    how = "task_struct.blocker" if wait.how == "blocker" else "waiter record on the kernel stack"
    return WaitEdge(task_node(t.pid), holder, wait.kind, resource, path=path, detail=detail,
                    note=note, source=f"kernel memory ({how})")
