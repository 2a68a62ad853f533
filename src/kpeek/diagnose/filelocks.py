"""Wait edges from file locks: /proc/locks and /proc/PID/fdinfo.

/proc/locks lists every lock (FLOCK, POSIX, OFDLCK, LEASE, DELEG) and,
after ``->``, the requests blocked on it, under the same number as the lock
that blocks them. The pid column is the owning process (-1 for OFD locks,
which belong to an open file); the ``lock:`` lines of /proc/PID/fdinfo/FD
name the descriptor through which each lock is held, so OFD holders and
inherited flock holders are found there.
"""

from __future__ import annotations

from collections.abc import Iterable

from kpeek.diagnose.fdindex import index_of
from kpeek.diagnose.graph import WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import inode_of_target, syscall_target
from kpeek.model import Snapshot, Task
from kpeek.records import record

KIND_NAMES = {"FLOCK": "flock", "POSIX": "posix", "OFDLCK": "ofd", "LEASE": "lease",
              "DELEG": "lease"}
# wchan of a task sleeping for a file lock or a lease break
LOCK_WAITS = ("locks_lock_inode_wait", "flock_lock_inode_wait", "posix_lock_inode_wait",
              "fcntl_setlk", "do_lock_file_wait", "__break_lease", "break_lease",
              "locks_lock_file_wait", "flock")


@record(frozen=True, slots=True)
class FileLock:
    """One line of /proc/locks."""

    number: int
    blocked: bool  # a "->" line: a request waiting on lock ``number``
    kind: str  # FLOCK POSIX OFDLCK LEASE DELEG
    mode: str  # ADVISORY MANDATORY ACTIVE BREAKING BREAKER
    access: str  # READ WRITE UNLCK
    pid: int  # -1 for OFD locks
    inode: str | None  # "major:minor:ino" as the snapshot's Inode ids
    start: str
    end: str

    @property
    def key(self) -> tuple[str, str, str | None, str, str]:
        return (self.kind, self.access, self.inode, self.start, self.end)

    @property
    def range(self) -> str:
        if self.kind in ("FLOCK", "LEASE", "DELEG"):
            return ""
        return f" bytes {self.start}-{self.end}"


def parse_locks(text: str) -> list[FileLock]:
    """Parse /proc/locks (or a fdinfo ``lock:`` value). Bad lines are skipped."""
    locks = []
    for line in text.splitlines():
        line = line.removeprefix("lock:").strip()
        head, sep, rest = line.partition(":")
        if not sep or not head.strip().isdigit():
            continue
        words = rest.split()
        blocked = bool(words) and words[0] == "->"
        if blocked:
            words = words[1:]
        if len(words) < 7:
            continue
        kind, mode, access, pid, where, start, end = words[:7]
        try:
            locks.append(FileLock(int(head), blocked, kind, mode, access, int(pid),
                                  _inode_id(where), start, end))
        except ValueError:
            continue
    return locks


def _inode_id(where: str) -> str | None:
    parts = where.split(":")
    if len(parts) != 3:
        return None  # *NOINODE*
    return f"{int(parts[0], 16)}:{int(parts[1], 16)}:{int(parts[2])}"


def read_proc_locks() -> list[FileLock]:
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            return parse_locks(f.read())
    except OSError:
        return []


def lock_holders_by_fd(snapshot: Snapshot, inodes: set[str]) -> dict[tuple, list[tuple[int, int]]]:
    """(kind, access, inode, start, end) -> [(tgid, fd)] holding it, from fdinfo."""
    index = index_of(snapshot)
    found: dict[tuple, list[tuple[int, int]]] = {}
    for d in (d for inode in sorted(inodes) for d in index.holders(inode)):
        try:
            with open(f"/proc/{d.tgid}/fdinfo/{d.fd}", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for lock in parse_locks("\n".join(x for x in text.splitlines() if x.startswith("lock:"))):
            found.setdefault(lock.key, []).append((d.tgid, d.fd))
    return found


def path_of_inode(snapshot: Snapshot, inode: str | None) -> str | None:
    return index_of(snapshot).path_of_inode(inode)


def _waiting_threads(snapshot: Snapshot) -> list[Task]:
    return [t for t in snapshot.tasks if t.wchan and t.wchan.startswith(LOCK_WAITS)]


def _waiter_task(snapshot: Snapshot, request: FileLock, candidates: list[Task]) -> Task | None:
    """The thread sleeping for ``request``: by pid where /proc/locks names one,
    else (OFD) by the file its fcntl/flock call is on."""
    for t in candidates:
        if request.pid > 0 and t.tgid != request.pid:
            continue
        target = syscall_target(t)
        if target is not None and inode_of_target(snapshot, t, target) == request.inode:
            return t
    if request.pid > 0:
        same = [t for t in candidates if t.tgid == request.pid]
        if len(same) == 1:
            return same[0]
    return None


def file_lock_edges(graph: WaitGraph, locks: Iterable[FileLock] | None = None) -> None:
    """Add an all-of edge from each blocked lock request to the lock's holder."""
    snapshot = graph.snapshot
    locks = list(read_proc_locks() if locks is None else locks)
    if not any(lock.blocked for lock in locks):
        return
    holders_of = {lock.number: lock for lock in locks if not lock.blocked}
    by_fd = lock_holders_by_fd(snapshot, {lock.inode for lock in locks if lock.inode})
    candidates = _waiting_threads(snapshot)
    alive = {t.tgid for t in snapshot.tasks}
    for request in (lock for lock in locks if lock.blocked):
        held = holders_of.get(request.number)
        if held is None:
            continue
        waiter = _waiter_task(snapshot, request, candidates)
        if waiter is None:
            graph.notes.append(
                f"a blocked {request.kind} request (pid {request.pid}) on inode "
                f"{request.inode} could not be matched to a task")
            continue
        fds = by_fd.get(held.key, [])
        holder_pids = [held.pid] if held.pid > 0 and held.pid in alive else []
        if not holder_pids:
            holder_pids = sorted({tgid for tgid, _ in fds})
        path = path_of_inode(snapshot, held.inode)
        what = path or f"inode {held.inode}"
        kind = KIND_NAMES.get(held.kind, held.kind.lower())
        resource = f"the {held.kind} {held.access} lock{held.range} on {what}"
        if not holder_pids:
            graph.add(WaitEdge(task_node(waiter.pid), None, kind, resource, path=path,
                               note="its holder is in no process we can see",
                               source="/proc/locks"))
            continue
        for pid in holder_pids:
            through = [fd for tgid, fd in fds if tgid == pid]
            detail = f"held through fd {', '.join(map(str, through))}" if through else None
            graph.add(WaitEdge(task_node(waiter.pid), proc_node(pid), kind, resource,
                               any_of=len(holder_pids) > 1, path=path, detail=detail,
                               source="/proc/locks"))


def lock_wait_is_known(task: Task) -> bool:
    return bool(task.wchan and task.wchan.startswith(LOCK_WAITS))

