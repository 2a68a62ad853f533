"""Every other kind of wait, resolved from the system call a task sleeps in.

For each sleeping task (S or D, threads included) that no specific finder
(file locks, pipes read, FUSE, kernel locks, wait4) explained, the system
call and its arguments (/proc/PID/task/TID/syscall) say what it waits on:

* read/recv* and write/send* on a pipe, FIFO or socket: the other end
  (ends.Ends), any-of;
* poll, ppoll, select, pselect6, epoll_wait: the union of the other ends of
  every descriptor in the set (epoll's from the ``tfd:`` lines of the epoll
  descriptor's fdinfo; poll's and select's from the task's own memory);
* mq_timedreceive/mq_timedsend with no timeout on a POSIX message queue:
  the processes holding the queue open the other way (as for a FIFO);
* splice, tee, sendfile, copy_file_range: the other end of the input or the
  output descriptor, whichever its wait channel says it sleeps on;
* futex: a PI futex names its owner in the futex word (an all-of wait on
  that thread), and so does a robust mutex and pthread_join's wait; a plain
  futex does not: glibc's mutexes and rwlocks keep their holder's tid
  beside the word (userlocks.py), an inferred edge to that thread (a
  relocked mutex is its own root); otherwise (a condition variable, an
  rwlock held for reading) any other thread of the process could wake it;
* semop, msgrcv, msgsnd on SysV IPC: the last process to take the semaphore,
  or to send to (receive from) the queue (sysvwaits.py);
* vfork: the parent waits for the child to exec or exit;
* connect to a unix listener with a full backlog, and a send addressed to a
  unix datagram socket with a full queue: the holders of the socket bound to
  that address (addressed.py).

A wait with a timeout ends by itself, and a wait that anything outside the
processes may end (a remote peer, a terminal, a listening socket, a signal)
is free: neither adds an edge. So does a multiplexed wait on a descriptor
whose other end only the waiter's own process holds: that is its own
wakeup channel (a self-pipe that a signal handler writes to).
"""

from __future__ import annotations

from kpeek.diagnose.addressed import addressed_wake
from kpeek.diagnose.ends import Ends, Wake
from kpeek.diagnose.graph import Root, WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import read_user, s32, syscall_name
from kpeek.diagnose.sharedmem import SharedMappers, mapping_at
from kpeek.diagnose.sysvwaits import SYSV_CALLS, sysv_edges
from kpeek.diagnose.userlocks import user_lock
from kpeek.model import Task

READS = {"read", "readv", "pread64", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg"}
WRITES = {"write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg",
          "sendmmsg"}
# Calls that may name a unix address: connect, and a send with a destination.
ADDRESSED = {"connect", "sendto", "sendmsg"}
# Calls that move data from one descriptor to another: (input fd, output fd)
# argument positions. Which side it sleeps on, the wait channel tells.
MOVES = {"splice": (0, 2), "tee": (0, 1), "sendfile": (1, 0), "copy_file_range": (0, 2)}
_WAITS_TO_READ = ("readable", "read", "wait_data", "recv")
_WAITS_TO_WRITE = ("writable", "write", "wait_memory", "wait_for_space", "send", "sndbuf")
MULTIPLEX = {"poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait",
             "epoll_pwait2"}
EPOLLIN, EPOLLPRI, EPOLLOUT, EPOLLRDHUP = 0x1, 0x2, 0x4, 0x2000
POLLIN, POLLPRI, POLLOUT = 0x1, 0x2, 0x4
MAX_FDS = 4096
FUTEX_WAITS = {0, 9, 11}  # WAIT, WAIT_BITSET, WAIT_REQUEUE_PI
FUTEX_LOCK_PI = {6, 13}  # LOCK_PI, LOCK_PI2
FUTEX_PRIVATE = 128
FUTEX_TID_MASK = 0x3FFFFFFF


# wchan of waits that only a timer, a signal or a terminal ends: free, and
# common (every `sleep`), so their system call is not even read.
FREE_WAITS = ("do_nanosleep", "hrtimer_nanosleep", "common_nsleep", "sigsuspend",
              "sys_pause", "do_sigtimedwait", "n_tty_read", "inotify_read", "signalfd_",
              "do_sys_pause", "__do_sys_pause", "__x64_sys_pause")
# The same by system call (known at no cost when the BPF source read it).
FREE_CALLS = {"pause", "nanosleep", "clock_nanosleep", "rt_sigsuspend", "rt_sigtimedwait"}


def is_kernel_thread(t: Task) -> bool:
    return t.pid == 2 or t.ppid == 2 or t.tgid == 2


def general_edges(graph: WaitGraph) -> None:
    """Add edges for every sleeping task that has none yet."""
    ends = Ends(graph.snapshot, graph.notes)
    shared = SharedMappers(p.tgid for p in graph.snapshot.processes())
    waiting = {e.waiter for e in graph.edges}
    for t in graph.snapshot.tasks:
        node = task_node(t.pid)
        if t.state not in ("S", "D") or node in waiting or node in graph.roots \
                or is_kernel_thread(t) or (t.wchan or "").startswith(FREE_WAITS):
            continue
        _resolve(graph, ends, shared, t)


def _resolve(graph: WaitGraph, ends: Ends, shared: SharedMappers, t: Task) -> None:
    call = syscall_name(t)
    frames = (t.wchan or "", *(t.kernel_stack or ())[:6])
    if any("wait_for_vfork_done" in f or "do_sys_vfork" in f for f in frames) or (
            call is not None and _is_vfork(t, *call)):
        _vfork(graph, t)
        return
    if call is None:
        return
    name, args = call
    if name in FREE_CALLS:
        return
    wake: Wake | None = None  # one descriptor's wakers, with where they come from
    source = f"/proc/PID/syscall ({name}), fd table"
    if name in ADDRESSED and (wake := addressed_wake(ends, t, name, args)) is not None:
        source = f"/proc/PID/syscall ({name}), the address in its memory"
    elif name in READS or name in WRITES:
        wake = ends.wakers(t, args[0] & 0xFFFFFFFF, "in" if name in READS else "out")
    elif name in ("mq_timedreceive", "mq_timedsend") and not args[4]:  # no timeout
        wake = ends.message_queue(t, args[0] & 0xFFFFFFFF,
                                  "in" if name == "mq_timedreceive" else "out")
    elif name in MOVES:
        side = _moving_side(t, *MOVES[name])
        wake = ends.wakers(t, args[side[0]] & 0xFFFFFFFF, side[1]) if side else None
        source = f"/proc/PID/syscall ({name}) and the wait channel"
    elif name in MULTIPLEX:
        wakes = multiplexed_wakes(t, name, args, ends)
        if wakes is not None:
            add_wakes(graph, t, wakes, multiplexed=True,
                      source=f"/proc/PID/syscall ({name}) and its descriptor set")
    elif name == "futex":
        futex_edges(graph, t, args, shared)
    elif name in SYSV_CALLS:
        sysv_edges(graph, t, name, args)
    if wake is not None:
        add_wakes(graph, t, [wake], multiplexed=False, source=source)


def _moving_side(t: Task, fd_in: int, fd_out: int) -> tuple[int, str] | None:
    """(argument position, direction) of the descriptor a splice, tee,
    sendfile or copy_file_range sleeps on, from its wait channel
    (pipe_wait_readable, pipe_wait_writable, sk_wait_data...); None if it
    does not say."""
    wchan = t.wchan or ""
    if any(w in wchan for w in _WAITS_TO_WRITE):
        return fd_out, "out"
    if any(w in wchan for w in _WAITS_TO_READ):
        return fd_in, "in"
    return None


def add_wakes(graph: WaitGraph, t: Task, wakes: list[Wake], *, multiplexed: bool,
              source: str) -> None:
    """Any-of edges from ``t`` to every holder of every other end; none at all
    when one of them may be woken from outside (the wait is free)."""
    if multiplexed:  # the waiter's own wakeup channels count as outside
        wakes = [w for w in wakes if not (w.holders and set(w.holders) == {t.tgid})]
        if not wakes:
            return
    if not wakes or any(w.outside for w in wakes):
        return
    if any(not w.holders for w in wakes) and not graph.all_descriptors_seen():
        return  # the other end may be in a descriptor table we could not read
    for w in wakes:
        if not w.holders:
            node = f"none:{w.kind}:{w.resource}"
            graph.roots[node] = Root(
                "nobody", f"no process holds {w.other_end} of {w.resource}",
                "nothing will ever wake it: close the descriptor, or end the waiting process "
                "(the other end may sit unreceived in a unix socket message)")
            graph.add(WaitEdge(task_node(t.pid), node, w.kind, w.resource, any_of=True,
                               note=f"no process holds {w.other_end}", source=source))
            continue
        for tgid, fds in w.holders.items():
            graph.add(WaitEdge(
                task_node(t.pid), proc_node(tgid), w.kind, w.resource, any_of=True,
                detail=f"fd {', '.join(map(str, fds))}" if fds else None,
                relation=f"{w.other_end} held by" if w.other_end else None, source=source))


# -- poll, select, epoll -----------------------------------------------------------
def multiplexed_wakes(t: Task, name: str, args: list[int], ends: Ends) -> list[Wake] | None:
    """The wakers of every descriptor a poll/select/epoll waits on; None when
    the wait has a timeout or its set cannot be read."""
    if name == "poll" and s32(args[2]) >= 0:
        return None
    if name in ("ppoll", "epoll_pwait2") and args[2 if name == "ppoll" else 3]:
        return None
    if name in ("select", "pselect6") and args[4]:
        return None
    if name in ("epoll_wait", "epoll_pwait") and s32(args[3]) >= 0:
        return None
    if name.startswith("epoll"):
        wanted = _epoll_set(t, args[0] & 0xFFFFFFFF, ends)
    elif name in ("poll", "ppoll"):
        wanted = _poll_set(t, args[0], args[1])
    else:
        wanted = _select_set(t, args[0], args[1], args[2])
    if wanted is None:
        return None
    wakes = []
    for fd, direction in wanted:
        w = ends.wakers(t, fd, direction)
        if w is None:
            return None  # a descriptor we cannot see: nothing can be claimed
        wakes.append(w)
    return wakes


def _directions(mask: int, in_bits: int, out_bits: int) -> list[str]:
    found = []
    if mask & in_bits:
        found.append("in")
    if mask & out_bits:
        found.append("out")
    return found


def _epoll_set(t: Task, epfd: int, ends: Ends) -> list[tuple[int, str]] | None:
    try:
        with open(f"/proc/{t.tgid}/fdinfo/{epfd}", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = []
    for line in lines:
        if not line.startswith(b"tfd:"):
            continue
        words = line.split()
        try:
            fd = int(words[1])
            mask = int(words[3], 16)
            ino = next(int(w[4:], 16) for w in words if w.startswith(b"ino:"))
        except (IndexError, ValueError, StopIteration):
            return None
        f = ends.file(t.tgid, fd)
        if f is None or not f.inode.endswith(f":{ino}"):
            return None  # registered by another process, or since closed: unknown
        wanted += [(fd, d) for d in _directions(mask, EPOLLIN | EPOLLPRI | EPOLLRDHUP,
                                                 EPOLLOUT)]
    return wanted


def _poll_set(t: Task, address: int, nfds: int) -> list[tuple[int, str]] | None:
    if nfds > MAX_FDS:
        return None
    raw = read_user(t, address, 8 * nfds) if nfds else b""
    if raw is None:
        return None
    wanted = []
    for i in range(nfds):
        fd = s32(int.from_bytes(raw[8 * i:8 * i + 4], "little"))
        events = int.from_bytes(raw[8 * i + 4:8 * i + 6], "little")
        if fd >= 0:
            wanted += [(fd, d) for d in _directions(events, POLLIN | POLLPRI, POLLOUT)]
    return wanted


def _select_set(t: Task, nfds: int, readfds: int, writefds: int) -> list[tuple[int, str]] | None:
    nfds = s32(nfds)
    if not 0 <= nfds <= MAX_FDS:
        return None
    size = (nfds + 63) // 64 * 8
    wanted = []
    for address, direction in ((readfds, "in"), (writefds, "out")):
        if not address or not size:
            continue
        raw = read_user(t, address, size)
        if raw is None:
            return None
        bits = int.from_bytes(raw, "little")
        wanted += [(fd, direction) for fd in range(nfds) if bits >> fd & 1]
    return wanted


# -- futexes -----------------------------------------------------------------------
def _owner_task(graph: WaitGraph, waiter: Task, tid: int) -> Task | None:
    """The task whose id (in the waiter's pid namespace) is ``tid``."""
    if not tid:
        return None
    if waiter.pid == waiter.ns_pid:
        return graph.task(tid)
    return next((x for x in graph.snapshot.tasks
                 if x.pidns == waiter.pidns and x.ns_pid == tid), None)


def futex_edges(graph: WaitGraph, t: Task, args: list[int], shared: SharedMappers) -> None:
    uaddr, op, _, timeout = args[:4]
    cmd = op & 0x7F
    if timeout or cmd not in FUTEX_WAITS | FUTEX_LOCK_PI:
        return  # a timeout ends it; other commands do not sleep for long
    raw = read_user(t, uaddr, 4)
    word = int.from_bytes(raw, "little") if raw else 0
    owner = _owner_task(graph, t, word & FUTEX_TID_MASK)
    where = f"the futex at {uaddr:#x}"
    source = "/proc/PID/syscall (futex), the futex word through /proc/PID/mem"
    node = task_node(t.pid)
    if cmd in FUTEX_LOCK_PI:
        if owner is None:
            graph.add(WaitEdge(node, None, "futex", f"{where} (a priority-inheritance mutex)",
                               note=f"its owner tid {word & FUTEX_TID_MASK} is no task we see",
                               source=source))
        else:
            graph.add(WaitEdge(node, task_node(owner.pid), "futex",
                               f"{where} (a priority-inheritance mutex)",
                               detail="owner tid from the futex word", source=source))
        return
    if owner is not None and owner.pid != t.pid and owner.tgid == t.tgid:
        # A robust mutex (tid | FUTEX_WAITERS) or pthread_join (the joined tid).
        graph.add(WaitEdge(node, task_node(owner.pid), "futex", where,
                           detail="the futex word holds its tid (a robust mutex, or a join)",
                           certain=False, source=source))
        return
    if _lock_owner(graph, t, uaddr, word, op, shared, where, source):
        return
    if not op & FUTEX_PRIVATE:
        _shared_futex(graph, t, uaddr, where, shared, source)
        return
    if len(graph.threads_of(t.tgid)) < 2:
        root = f"none:futex:{t.pid}:{uaddr:#x}"
        graph.roots[root] = Root(
            "nobody", f"no other thread could wake {where} of this single-threaded process",
            "nothing will wake it (a lock copied locked across fork?): end the process")
        graph.add(WaitEdge(node, root, "futex", where, note="no other thread", source=source))
        return
    # One edge to the process (any of its threads), not one per thread: linear.
    graph.add(WaitEdge(node, proc_node(t.tgid), "futex", where, any_of=True,
                       note="a plain futex records no owner: any thread of the process "
                            "could wake it", relation="which any thread may wake, in",
                       source=source))


def _lock_owner(graph: WaitGraph, t: Task, uaddr: int, word: int, op: int,
                shared: SharedMappers, where: str, source: str) -> bool:
    """A glibc lock around the futex (userlocks.py) that records its holder:
    when that names a live thread of the waiter's process (or, for a
    process-shared futex, of a process that maps the same memory), the
    waiter waits for it (inferred: the memory may not be such a lock). The
    waiter's own tid: it relocked a mutex it holds, which nothing will
    release. Returns whether an edge was added."""
    lock = user_lock(t, uaddr, word)
    owner = _owner_task(graph, t, lock.holder_tid) if lock is not None else None
    if owner is None:
        return False
    if owner.tgid != t.tgid:
        found = None if op & FUTEX_PRIVATE else mapping_at(t.tgid, uaddr)
        if found is None or owner.tgid not in shared.of(*found):
            return False
    what = f"{where} ({lock.kind})"
    source += f", {lock.field}"
    if owner.pid == t.pid:
        if not lock.relockable:  # glibc refuses it (EDEADLK): not this lock after all
            return False
        root = f"none:mutex:{t.pid}:{uaddr:#x}"
        graph.roots[root] = Root(
            "nobody", f"it already holds {what}: a non-recursive mutex locked twice",
            "nothing will release it: end the process, and make the second lock go (or use "
            "a recursive mutex)")
        graph.add(WaitEdge(task_node(t.pid), root, "futex", what, note="its own mutex",
                           certain=False, source=source))
        return True
    graph.add(WaitEdge(task_node(t.pid), task_node(owner.pid), "futex", what,
                       detail=f"holder tid {lock.holder_tid} from {lock.field}", certain=False,
                       source=source))
    return True


def _shared_futex(graph: WaitGraph, t: Task, uaddr: int, where: str, shared: SharedMappers,
                  source: str) -> None:
    """A process-shared futex: any process that maps its memory may wake it.
    Only other processes count (a single thread cannot wake itself); with none
    seen, someone may still map it (a named shared memory object): no edge."""
    found = mapping_at(t.tgid, uaddr)
    if found is None:
        return  # private memory with a shared futex op: as good as private, unknown here
    mappers = [m for m in shared.of(*found) if m != t.tgid or len(graph.threads_of(m)) > 1]
    if not any(m != t.tgid for m in mappers):
        return
    for tgid in mappers:
        graph.add(WaitEdge(task_node(t.pid), proc_node(tgid), "futex", f"{where} (shared memory)",
                           any_of=True, certain=False,
                           note="a shared futex records no owner: any process that maps it "
                                "could wake it",
                           relation="shared with",
                           source=source + ", /proc/PID/maps"))


# -- vfork ---------------------------------------------------------------------------
CLONE_VFORK = 0x4000


def _is_vfork(t: Task, name: str, args: list[int]) -> bool:
    """vfork(2), or clone/clone3 with CLONE_VFORK (posix_spawn's way)."""
    if name == "vfork":
        return True
    if name == "clone":
        return bool(args[0] & CLONE_VFORK)
    if name == "clone3":
        raw = read_user(t, args[0], 8)  # struct clone_args starts with its flags
        return raw is not None and bool(int.from_bytes(raw, "little") & CLONE_VFORK)
    return False


def _vfork(graph: WaitGraph, t: Task) -> None:
    from kpeek.sources.kcmp import same_vm

    children = [p for p in graph.snapshot.processes() if p.ppid == t.tgid]
    sharing = [c for c in children if same_vm(t.pid, c.pid)]
    for c in sharing or children:
        graph.add(WaitEdge(task_node(t.pid), proc_node(c.pid), "vfork",
                           "its vfork child to exec or exit", any_of=True,
                           certain=bool(sharing), source="wait_for_vfork_done, kcmp KCMP_VM"))
