"""Wait edges from FUSE: a task waiting in request_wait_answer waits for the
process that serves its FUSE connection.

A connection is numbered by the mount's device number (the directory name
under /sys/fs/fuse/connections when fusectl is mounted, kernel dev_t encoding: major << 20 | minor).
Its server is whoever holds a /dev/fuse descriptor whose fdinfo says
``fuse_connection: N`` (kernels >= 6.x print it); where fdinfo does not say,
the sole /dev/fuse holder is taken, and the guess is said.

Which server thread took a request is not visible from outside, so the
edge goes to the server process; threads idle in the /dev/fuse read (and in
futex waits: libfuse's loop threads) cannot answer a request already taken
and are ignored when deciding whether the wait can end.
"""

from __future__ import annotations

from dataclasses import field

from kpeek.diagnose.fdindex import index_of
from kpeek.diagnose.graph import WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import proc_field, syscall_target
from kpeek.model import Snapshot, Task
from kpeek.records import record
from kpeek.sources.mounts import deepest_mount, read_mountinfo

FUSECTL = "/sys/fs/fuse/connections"
FUSE_WAITS = ("request_wait_answer", "fuse_wait_on_page_writeback", "fuse_wait_on_folio_writeback",
              "__fuse_simple_request", "fuse_simple_request", "fuse_get_req")
IDLE_SERVER_WAITS = ("fuse_dev_do_read", "fuse_dev_read", "fuse_dev_poll", "futex")


@record
class FuseConnection:
    number: int
    mountpoints: list[str] = field(default_factory=list)
    servers: list[tuple[int, int]] = field(default_factory=list)  # (tgid, fd)
    guessed: bool = False
    waiting: int | None = None


def dev_to_connection(major: int, minor: int) -> int:
    """The kernel's internal dev_t, as fusectl names connections."""
    return (major << 20) | minor


def is_fuse_waiter(task: Task) -> bool:
    if task.wchan and task.wchan.startswith(FUSE_WAITS):
        return True
    return bool(task.kernel_stack) and task.kernel_stack[0].startswith(FUSE_WAITS)


def is_idle_server_thread(task: Task) -> bool:
    return bool(task.wchan) and task.wchan.startswith(IDLE_SERVER_WAITS)


def fuse_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[int, list[str]]:
    """Connection number -> mount points of FUSE file systems."""
    found: dict[int, list[str]] = {}
    for m in read_mountinfo(mountinfo):
        if m.fstype == "fuse" or m.fstype.startswith(("fuse.", "fuseblk")):
            found.setdefault(dev_to_connection(m.major, m.minor), []).append(m.mountpoint)
    return found


def fusectl_mounted() -> bool:
    """Whether /sys/fs/fuse/connections is mounted. The doctor never mounts
    it (it changes nothing on the machine): without it, only the count of
    requests waiting on each connection is unseen."""
    try:
        with open("/proc/self/mounts", "rb") as f:
            return b" fusectl " in f.read()
    except OSError:
        return False


def _fdinfo_connection(tgid: int, fd: int) -> int | None:
    return proc_field(f"/proc/{tgid}/fdinfo/{fd}", b"fuse_connection:", int)


def connections(snapshot: Snapshot) -> dict[int, FuseConnection]:
    """Every FUSE connection with its mount points and serving (tgid, fd)s."""
    conns = {n: FuseConnection(n, mps) for n, mps in fuse_mounts().items()}
    unplaced: list[tuple[int, int]] = []
    for d in snapshot.fds:
        f = snapshot.open_files.get(d.open_file)
        if f is None or f.path != "/dev/fuse":
            continue
        number = _fdinfo_connection(d.tgid, d.fd)
        if number is None:
            unplaced.append((d.tgid, d.fd))
            continue
        conns.setdefault(number, FuseConnection(number)).servers.append((d.tgid, d.fd))
    if unplaced:
        # Kernels without fuse_connection in fdinfo: only a sole server is certain.
        orphans = [c for c in conns.values() if not c.servers]
        if len(orphans) == 1:
            orphans[0].servers.extend(unplaced)
            orphans[0].guessed = len({tgid for tgid, _ in unplaced}) > 1
    for c in conns.values():
        try:
            with open(f"{FUSECTL}/{c.number}/waiting") as f:
                c.waiting = int(f.read())
        except (OSError, ValueError):
            pass
    return conns


def _connection_of(snapshot: Snapshot, task: Task, conns: dict[int, FuseConnection]) -> int | None:
    target = syscall_target(task)
    if target is not None and target.fd is not None:
        f = index_of(snapshot).file(task.tgid, target.fd)
        if f is not None:
            major, minor, _ = f.inode.split(":")
            number = dev_to_connection(int(major), int(minor))
            if number in conns:
                return number
    if target is not None and target.path is not None:
        number = deepest_mount(target.path, ((mp, c.number) for c in conns.values()
                                             for mp in c.mountpoints))
        if number is not None:
            return number
    busy = [c.number for c in conns.values() if c.waiting]
    return busy[0] if len(busy) == 1 else None


def fuse_edges(graph: WaitGraph) -> dict[str, set[int]]:
    """Add edges waiter -> FUSE server process. Returns, per server process
    node, the thread ids idle in the request read (see module doc)."""
    snapshot = graph.snapshot
    waiters = [t for t in snapshot.tasks if is_fuse_waiter(t)]
    if not waiters:
        return {}
    if not fusectl_mounted():
        graph.notes.append("fusectl is not mounted (doctor does not mount it): the requests "
                           "waiting on each FUSE connection are not counted")
    conns = connections(snapshot)
    idle: dict[str, set[int]] = {}
    for t in waiters:
        number = _connection_of(snapshot, t, conns)
        conn = conns.get(number) if number is not None else None
        if conn is None:
            graph.add(WaitEdge(task_node(t.pid), None, "fuse", "a FUSE request",
                               note="its FUSE connection could not be identified",
                               source="wchan"))
            continue
        where = conn.mountpoints[0] if conn.mountpoints else "a mount not visible here"
        resource = f"FUSE connection {conn.number} ({where})"
        servers = sorted({tgid for tgid, _ in conn.servers})
        if not servers:
            graph.add(WaitEdge(task_node(t.pid), None, "fuse", resource, path=where,
                               note="no process holds /dev/fuse for it: the server is gone",
                               source="/proc/PID/fdinfo"))
            continue
        for tgid in servers:
            node = proc_node(tgid)
            fds = [fd for g, fd in conn.servers if g == tgid]
            idle[node] = {s.pid for s in graph.threads_of(tgid) if is_idle_server_thread(s)}
            graph.add(WaitEdge(
                task_node(t.pid), node, "fuse", resource, any_of=len(servers) > 1, path=where,
                detail=f"/dev/fuse fd {', '.join(map(str, fds))}",
                note="server guessed: the only /dev/fuse holder" if conn.guessed else None,
                source="wchan request_wait_answer, /proc/PID/fdinfo fuse_connection"))
    return idle
