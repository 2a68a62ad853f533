"""doctor's general model of waiting, on real kernel states: a waiter blocked
on a pipe (both directions), a unix socket (stream, datagram, seqpacket), a
TCP connection over loopback, poll/select/epoll, wait4 or a futex, while the
side that would wake it is stopped by SIGSTOP, stopped by a tracer, frozen
in a cgroup, or stuck itself; and the same shapes with that side free (no
finding). Every stop, trace, freeze and process is undone in teardown."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import socket
import subprocess
import sys
import time
import tty

import pytest

from capabilities import require
from fuse_scenarios import _die_with_parent, reap, state, wait_for
from kpeek import jsonout
from kpeek.cli import main
from kpeek.diagnose.findings import diagnose
from kpeek.diagnose.procinfo import syscall_name
from kpeek.diagnose.story import all_text, hung_text, to_dot, to_json
from kpeek.sources.procfs import take_snapshot
from wait_scenarios import frozen_cgroup, frozen_ext4, stopped, thread_state, traced

PY = sys.executable

# The side that could wake the waiter: it holds the other end and sleeps
# (free: a timer wakes it), or, "stuck", reads a pipe only it can write to.
BLOCKER = """
import os, sys, time
print("ready", flush=True)
if sys.argv[1] == "stuck":
    r, w = os.pipe()
    os.read(r, 1)
time.sleep(600)
"""

WAITER = """
import os, select, socket, sys
shape, fd = sys.argv[1], int(sys.argv[2])
address = sys.argv[3] if sys.argv[3:] else None
if address and address.startswith("@"):
    address = "\\0" + address[1:]
print("ready", flush=True)
if shape.startswith("mqueue"):
    import ctypes
    rt = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8192)
    while shape == "mqueue-write":
        rt.mq_send(fd, b"x", 1, 0)
    rt.mq_receive(fd, buf, 8192, None)
elif shape == "splice-read":  # from the pipe into a pipe of its own
    r, w = os.pipe()
    os.splice(fd, w, 65536)
elif shape == "splice-write":  # from a pipe of its own into the full pipe
    r, w = os.pipe()
    while True:
        os.write(w, b"x" * 4096)
        os.splice(r, fd, 4096)
elif shape == "eventfd-read":
    os.read(fd, 8)
elif shape == "pidfd-poll":
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.poll()
elif shape == "unix-connect":
    socket.socket(fileno=fd).connect(address)
elif shape == "unix-dgram-sendto":
    s = socket.socket(fileno=fd)
    while True:
        s.sendto(b"x" * 1024, address)
elif shape in ("pipe-read", "fifo-read", "tty-read", "ptmx-read"):
    os.read(fd, 1)
elif shape in ("pipe-write", "fifo-write", "tty-write", "ptmx-write"):
    while True:
        os.write(fd, b"x" * 4096)
elif shape.endswith("-read"):
    socket.socket(fileno=fd).recv(1)
elif shape.endswith("-write"):
    s = socket.socket(fileno=fd)
    while True:
        s.send(b"x" * 1024)
elif shape == "poll":
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.poll()
elif shape == "select":
    select.select([fd], [], [])
elif shape == "epoll":
    e = select.epoll()
    e.register(fd, select.EPOLLIN)
    e.poll()
"""

# shape -> (the kind of the waiter's edge, the system calls it sleeps in)
SHAPES = {
    "pipe-read": ("pipe", {"read"}),
    "pipe-write": ("pipe", {"write"}),
    # A named FIFO held open by another process: its holders are the wakers
    # (one that only the waiter holds is woken by whoever opens it next).
    "fifo-read": ("fifo", {"read"}),
    "fifo-write": ("fifo", {"write"}),
    # A pseudo-terminal: the process holding its master side (a terminal
    # emulator, sshd, tmux) is who gives it input and drains its output.
    "tty-read": ("tty", {"read"}),
    "tty-write": ("tty", {"write"}),
    # Its master side, the other way round: the programs holding the
    # terminal write what the master reads and read what it writes.
    "ptmx-read": ("tty", {"read"}),
    "ptmx-write": ("tty", {"write"}),
    "unix-stream-read": ("socket", {"recvfrom"}),
    "unix-stream-write": ("socket", {"sendto"}),
    "unix-dgram-read": ("socket", {"recvfrom"}),
    "unix-dgram-write": ("socket", {"sendto"}),
    "unix-seqpacket-read": ("socket", {"recvfrom"}),
    # The address in the call names the other end: a listener whose backlog
    # is full (only its accept makes room), a datagram receiver whose queue is.
    "unix-connect": ("socket", {"connect"}),
    # splice's wait channel says which of its two descriptors it sleeps on.
    "splice-read": ("pipe", {"splice"}),
    "splice-write": ("pipe", {"splice"}),
    # A POSIX message queue, like a FIFO: the other processes holding it open.
    "mqueue-read": ("mqueue", {"mq_timedreceive"}),
    "mqueue-write": ("mqueue", {"mq_timedsend"}),
    # An eventfd is written through the open file its holders share.
    "eventfd-read": ("eventfd", {"read"}),
    "unix-dgram-sendto": ("socket", {"sendto"}),
    "tcp-read": ("socket", {"recvfrom"}),
    "tcp-write": ("socket", {"sendto"}),
    "poll": ("pipe", {"poll", "ppoll"}),
    "select": ("pipe", {"select", "pselect6"}),
    "epoll": ("pipe", {"epoll_wait", "epoll_pwait"}),
}
# Every shape with SIGSTOP and free; these also with a tracer, a frozen
# cgroup and a stuck blocker (each blocker is the same code for every shape).
EVERY_BLOCKER = ("pipe-read", "pipe-write", "unix-stream-write", "tcp-read", "epoll")
CASES = [(s, b) for s in SHAPES for b in ("free", "stop")] + [
    (s, b) for s in EVERY_BLOCKER for b in ("trace", "freeze", "stuck")]


# The waiter's fd -> the address it connects or sends to (see waiter_args).
ADDRESSES: dict[int, str] = {}


def waiter_args(shape: str, mine: int) -> tuple[str, ...]:
    """WAITER's arguments: the shape, its fd and, if the shape names one, the
    address ("@" for an abstract name's NUL)."""
    return (shape, str(mine), *([ADDRESSES.pop(mine)] if mine in ADDRESSES else []))


def _addressed(shape: str, where: str | None) -> tuple[int, int]:
    """A listener with a full backlog (a path in ``where``), or a datagram
    receiver (an abstract name); the waiter's socket is unbound."""
    stream = shape == "unix-connect"
    kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
    mine = socket.socket(socket.AF_UNIX, kind)
    if where is not None:
        # a newline too: /proc/net/unix prints a name raw, on two lines
        address = os.path.join(where, f"bound-{mine.fileno()}\nname.sock")
    else:
        address = f"@kpeek-test-{os.getpid()}-{mine.fileno()}"
    name = "\0" + address[1:] if address.startswith("@") else address
    bound = socket.socket(socket.AF_UNIX, kind)
    bound.bind(name)
    if stream:
        bound.listen(0)
        with socket.socket(socket.AF_UNIX) as filler:  # the backlog of 0 is full
            filler.connect(name)
    ADDRESSES[mine.fileno()] = address
    return mine.detach(), bound.detach()


def _message_queue() -> tuple[int, int]:
    """A POSIX message queue open read-write twice (two open files), its
    name unlinked at once: nothing is left behind."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    name = f"/kpeek-test-{os.getpid()}-{len(ADDRESSES)}-{time.monotonic_ns()}".encode()
    fds = [libc.mq_open(name, os.O_RDWR | os.O_CREAT, 0o600, None) for _ in range(2)]
    libc.mq_unlink(name)
    assert min(fds) >= 0, os.strerror(ctypes.get_errno())
    return fds[0], fds[1]


def ends(shape: str, where: str | None = None) -> tuple[int, int]:
    """(the waiter's fd, the blocker's fd): two ends of one channel (a FIFO's
    in the folder ``where``)."""
    if shape in ("unix-connect", "unix-dgram-sendto"):
        return _addressed(shape, where)
    if shape.startswith("mqueue"):
        return _message_queue()
    if shape.startswith("eventfd"):
        counter = os.eventfd(0)
        return counter, os.dup(counter)
    if shape.startswith(("tty", "ptmx")):
        primary, secondary = pty.openpty()
        tty.setraw(secondary)  # no echo: output waits only for the master's reader
        return (secondary, primary) if shape.startswith("tty") else (primary, secondary)
    if shape.startswith("fifo"):
        path = os.path.join(where or "", "fifo")
        os.mkfifo(path)
        r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # no writer yet: do not wait
        w = os.open(path, os.O_WRONLY)
        os.set_blocking(r, True)
        return (w, r) if shape == "fifo-write" else (r, w)
    if shape.startswith(("pipe", "splice")) or shape in ("poll", "select", "epoll"):
        r, w = os.pipe()
        return (w, r) if shape.endswith("-write") else (r, w)
    if shape.startswith("unix-"):
        kind = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM,
                "seqpacket": socket.SOCK_SEQPACKET}[shape.split("-")[1]]
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        return a.detach(), b.detach()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return accepted.detach(), client.detach()


def start(procs: list, code: str, *argv: str, fds: tuple[int, ...] = ()) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", code, *argv], pass_fds=fds, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    procs.append(p)
    assert p.stdout.readline().strip() == "ready"
    return p


def sleeping_in(pid: int, names: set[str], tid: int | None = None) -> bool:
    from kpeek.model import Task

    tid = tid or pid
    t = Task(pid=tid, tgid=pid, ppid=0, pgid=0, sid=0, comm="", state="S", pidns=0,
             ns_pid=tid, ns_tgid=pid, ns_ppid=0, ns_pgid=0, ns_sid=0)
    from kpeek.diagnose.procinfo import forget_syscalls

    forget_syscalls()
    call = syscall_name(t)
    return call is not None and call[0] in names and thread_state(pid, tid) == "S"


def doctor(*pids: int, min_sleep: float = 1.0):
    """doctor on these processes only (a snapshot of the whole machine is
    slow on a loaded test machine; the waits here are all among them)."""
    snapshot = take_snapshot(pids, stacks=True)
    return diagnose(snapshot, min_sleep=min_sleep, kernel_log=False)


@contextlib.contextmanager
def blocked(how: str, pid: int):
    """Yield the text doctor should give as the fix (None: no fix line)."""
    if how == "stop":
        with stopped(pid) as fix:
            yield fix
    elif how == "trace":
        with traced(pid) as tracer:
            yield tracer
    elif how == "freeze":
        require("cgroup-freeze")
        with frozen_cgroup(pid) as path:
            yield f"echo 0 > {path}/cgroup.freeze"
    else:
        yield None


ROOT_WORDS = {"stop": "stopped by a signal", "trace": "stopped by its tracer",
              "freeze": "in the frozen cgroup", "stuck": "never reaches end-of-file"}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("shape", "how"), CASES)
def test_wait_on_a_blocked_side_is_a_finding_and_on_a_free_side_not(procs, shape, how, tmp_path):
    require("root")
    kind, calls = SHAPES[shape]
    mine, theirs = ends(shape, str(tmp_path))
    try:
        blocker = start(procs, BLOCKER, "stuck" if how == "stuck" else "sleep", fds=(theirs,))
        waiter = start(procs, WAITER, *waiter_args(shape, mine), fds=(mine,))
    finally:
        os.close(mine)
        os.close(theirs)
    wait_for(lambda: sleeping_in(waiter.pid, calls), 15, f"the waiter in {calls}")
    if how == "stuck":
        wait_for(lambda: sleeping_in(blocker.pid, {"read"}), 15, "the blocker stuck")
    with blocked(how if how != "free" else "none", blocker.pid) as fix:
        diag = doctor(waiter.pid, blocker.pid)
        edges = [e for e in diag.graph.edges if e.waiter == f"task:{waiter.pid}"]
        assert (kind, f"proc:{blocker.pid}") in {(e.kind, e.holder) for e in edges}, edges
        found = [h for h in diag.hung if h.task.pid == waiter.pid]
        if how == "free":
            assert found == [] and f"task:{waiter.pid}" not in diag.stuck, all_text(diag)
            return
        assert len(found) == 1, all_text(diag)
        h = found[0]
        assert h.stuck and h.chain[0].holder == f"proc:{blocker.pid}"
        assert f"pid {blocker.pid}" in h.root and ROOT_WORDS[how] in h.root, h.root
        story = "\n".join(hung_text(diag.graph, h))
        assert f"pid {waiter.pid}" in story and h.chain[0].resource in story
        if fix is not None:
            assert fix in h.fix and f"fix: {h.fix}" in story


CHILD = """
import os, sys, time
child = os.fork()
if child == 0:
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], sys.argv[2]])
print("ready", child, flush=True)
os.waitpid(child, 0)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["free", "stop", "trace", "freeze"])
def test_parent_in_wait4_on_a_blocked_child(procs, how):
    require("root")
    parent = subprocess.Popen([PY, "-c", CHILD, BLOCKER, "sleep"], stdout=subprocess.PIPE,
                              text=True)
    procs.append(parent)
    child = int(parent.stdout.readline().split()[1])

    class Child:
        pid = child

        def send_signal(self, sig):
            os.kill(child, sig)

        def wait(self, timeout=None):
            pass  # its parent reaps it

    procs.insert(0, Child())
    wait_for(lambda: sleeping_in(parent.pid, {"wait4", "waitid"}), 15, "the parent in wait4")
    with blocked(how if how != "free" else "none", child) as fix:
        # The child's stop wakes the parent's wait4 for a moment (the stop is
        # reported to it); a snapshot in that moment sees no wait at all.
        wait_for(lambda: sleeping_in(parent.pid, {"wait4", "waitid"}), 15,
                 "the parent back in wait4")
        diag = doctor(parent.pid, child)
        found = [h for h in diag.hung if h.task.pid == parent.pid]
        if how == "free":
            assert found == [], all_text(diag)
            return
        [h] = found
        assert h.chain[0].kind == "child" and h.chain[0].holder == f"proc:{child}"
        assert ROOT_WORDS[how] in h.root and fix in h.fix


# A parent with two children: "apart" in a process group of its own, "near"
# in the parent's. The parent waits in the call given, for whom it names.
TWO_CHILDREN = """
import os, sys, time
def child(group):
    pid = os.fork()
    if pid == 0:
        if group:
            os.setpgid(0, 0)
        time.sleep(600)
        os._exit(0)
    return pid
apart, near = child(True), child(False)
try:
    os.setpgid(apart, apart)  # as the child does: whichever runs first
except OSError:
    pass
pidfd = os.pidfd_open(apart)
print("ready", apart, near, flush=True)
how = sys.argv[1]
if how == "wait4-pid":
    os.waitpid(apart, 0)
elif how == "wait4-own-group":
    os.waitpid(0, 0)
elif how == "wait4-group":
    os.waitpid(-apart, 0)
elif how == "waitid-pid":
    os.waitid(os.P_PID, apart, os.WEXITED)
elif how == "waitid-group":
    os.waitid(os.P_PGID, apart, os.WEXITED)
elif how == "waitid-pidfd":
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
elif how == "waitid-all":
    os.waitid(os.P_ALL, 0, os.WEXITED)
"""


class _Pid:
    """A process the test did not start, stopped and killed by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout=None) -> None:
        pass  # its parent reaps it


# how -> whether the wait names only the stopped child "apart"
SELECTORS = {"wait4-pid": True, "wait4-own-group": False, "wait4-group": True,
             "waitid-pid": True, "waitid-group": True, "waitid-pidfd": True,
             "waitid-all": False}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", sorted(SELECTORS))
def test_a_wait_for_some_children_waits_for_those_only(procs, how):
    """wait4's pid and waitid's idtype narrow the children: with "apart"
    stopped and "near" free, a wait that names only "apart" is stuck, one
    that "near" may end is not."""
    require("root")
    parent = subprocess.Popen([PY, "-c", TWO_CHILDREN, how], stdout=subprocess.PIPE, text=True)
    procs.append(parent)
    _, apart, near = parent.stdout.readline().split()
    apart, near = int(apart), int(near)
    procs[:0] = [_Pid(apart), _Pid(near)]
    wait_for(lambda: sleeping_in(parent.pid, {"wait4", "waitid"}), 15, "the parent waiting")
    with stopped(apart):
        wait_for(lambda: sleeping_in(parent.pid, {"wait4", "waitid"}), 15,
                 "the parent back in its wait")
        diag = doctor(parent.pid, apart, near)
        kids = {e.holder for e in diag.graph.edges if e.waiter == f"task:{parent.pid}"}
        found = [h for h in diag.hung if h.task.pid == parent.pid]
        if SELECTORS[how]:
            assert kids == {f"proc:{apart}"}, kids
            [h] = found
            assert f"pid {apart}" in h.root and "stopped" in h.root
        else:
            assert f"proc:{near}" in kids and found == [], all_text(diag)


PIDFD_WAITER = """
import os, select, sys
fd = os.pidfd_open(int(sys.argv[1]))
print("ready", flush=True)
p = select.poll()
p.register(fd, select.POLLIN)
p.poll()
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["free", "stop"])
def test_a_poll_on_a_pidfd_waits_for_that_process(procs, how):
    """A supervisor polling a pidfd waits for the process it names to exit."""
    require("root")
    target = start(procs, BLOCKER, "sleep")
    waiter = start(procs, PIDFD_WAITER, str(target.pid))
    wait_for(lambda: sleeping_in(waiter.pid, {"poll", "ppoll"}), 15, "the waiter in poll")
    with blocked("stop" if how == "stop" else "none", target.pid):
        diag = doctor(waiter.pid, target.pid)
        edges = [e for e in diag.graph.edges if e.waiter == f"task:{waiter.pid}"]
        assert [(e.kind, e.holder) for e in edges] == [("pidfd", f"proc:{target.pid}")], edges
        found = [h for h in diag.hung if h.task.pid == waiter.pid]
        if how == "free":
            assert found == [], all_text(diag)
            return
        [h] = found
        story = "\n".join(hung_text(diag.graph, h))
        assert f"(pid {target.pid}) to exit" in story, story
        assert f"pid {target.pid}" in h.root


FUTEX = """
import threading, time
lock = threading.Lock()
lock.acquire()
waiter = threading.Thread(target=lock.acquire)
waiter.start()
print("ready", waiter.native_id, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["free", "trace"])
def test_thread_on_a_plain_futex_whose_owner_thread_is_traced(procs, how):
    """The lock's owner (the main thread) is stopped by a tracer; the waiting
    thread can only be woken by a thread of its own process."""
    require("root")
    p = subprocess.Popen([PY, "-c", FUTEX], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    tid = int(p.stdout.readline().split()[1])
    wait_for(lambda: sleeping_in(p.pid, {"futex"}, tid), 15, "the thread in futex")
    with contextlib.ExitStack() as stack:
        tracer = stack.enter_context(traced(p.pid)) if how == "trace" else None
        diag = doctor(p.pid)
        found = [h for h in diag.hung if h.task.pid == tid]
        edges = [e for e in diag.graph.edges if e.waiter == f"task:{tid}"]
        assert [(e.kind, e.holder) for e in edges] == [("futex", f"proc:{p.pid}")]
        assert "records no owner" in edges[0].note
        if tracer is None:
            assert found == [], all_text(diag)
            return
        [h] = found
        assert "stopped by its tracer" in h.root and tracer in h.fix


SEMAPHORE = """
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[2], os.O_RDWR)
shared = mmap.mmap(fd, 64, mmap.MAP_SHARED)
sem = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(shared)))
if sys.argv[1] == "poster":
    libc.sem_init(sem, 1, 0)  # process-shared, nothing posted: the waiter sleeps
    print("ready", flush=True)
    time.sleep(600)           # would post one day
else:
    print("ready", flush=True)
    libc.sem_wait(sem)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["free", "stop"])
def test_shared_semaphore_waits_on_the_processes_that_map_it(procs, tmp_path, how):
    """sem_wait on a process-shared semaphore in a shared file mapping: a
    shared futex, which any process mapping that memory could post."""
    require("root")
    path = tmp_path / "sem"
    path.write_bytes(bytes(4096))
    poster = start(procs, SEMAPHORE, "poster", str(path))
    waiter = start(procs, SEMAPHORE, "waiter", str(path))
    wait_for(lambda: sleeping_in(waiter.pid, {"futex"}), 15, "the waiter in sem_wait")
    with blocked(how if how != "free" else "none", poster.pid) as fix:
        diag = doctor(waiter.pid, poster.pid)
        edges = [e for e in diag.graph.edges if e.waiter == f"task:{waiter.pid}"]
        assert [(e.kind, e.holder) for e in edges] == [("futex", f"proc:{poster.pid}")], edges
        assert "shared memory" in edges[0].resource and "records no owner" in edges[0].note
        found = [h for h in diag.hung if h.task.pid == waiter.pid]
        if how == "free":
            assert found == [], all_text(diag)
            return
        [h] = found
        assert f"pid {poster.pid}" in h.root and "stopped by a signal" in h.root
        assert fix in h.fix


PI_MUTEX = r"""
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    pthread_mutex_t *m = mmap(0, sizeof *m, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(m, &a);
    pthread_mutex_lock(m);
    pid_t child = fork();
    if (child == 0) { pthread_mutex_lock(m); return 0; }
    printf("ready %d\n", child);
    fflush(stdout);
    pause();
    return 0;
}
"""


@pytest.fixture(scope="module")
def pi_program(tmp_path_factory):
    cc = next((c for c in ("cc", "gcc", "clang") if subprocess.run(
        ["which", c], capture_output=True).returncode == 0), None)
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("pi")
    (d / "pi.c").write_text(PI_MUTEX)
    subprocess.run([cc, "-O0", "-pthread", "-o", str(d / "pi"), str(d / "pi.c")], check=True)
    return str(d / "pi")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["free", "stop"])
def test_priority_inheritance_mutex_names_its_owner_across_processes(procs, pi_program, how):
    require("root")
    owner = subprocess.Popen([pi_program], stdout=subprocess.PIPE, text=True)
    procs.append(owner)
    child = int(owner.stdout.readline().split()[1])
    wait_for(lambda: sleeping_in(child, {"futex"}), 15, "the child in FUTEX_LOCK_PI")
    with blocked(how if how != "free" else "none", owner.pid) as fix:
        diag = doctor(owner.pid, child)
        edges = [e for e in diag.graph.edges if e.waiter == f"task:{child}"]
        assert [(e.kind, e.holder, e.any_of) for e in edges] == [
            ("futex", f"task:{owner.pid}", False)]
        found = [h for h in diag.hung if h.task.pid == child]
        if how == "free":
            assert found == []
            return
        [h] = found
        assert "priority-inheritance" in h.chain[0].resource and fix in h.fix
    with contextlib.suppress(OSError):
        os.kill(child, 9)


@pytest.mark.timeout(120)
def test_writer_on_a_frozen_file_system_and_the_reader_behind_it(procs):
    """A writer sleeps in the freeze protection of a frozen ext4; a reader of
    the writer's pipe waits behind it. Both name the mount and the fix."""
    require("root", "fsfreeze")
    with frozen_ext4() as (mnt, freeze):
        path = os.path.join(mnt, "f")
        r, w = os.pipe()
        try:
            reader = start(procs, WAITER, "pipe-read", str(r), fds=(r,))
            writer = start(procs, "import os, sys; print('ready', flush=True); "
                                  "sys.stdin.readline(); os.open(sys.argv[1], os.O_CREAT | "
                                  "os.O_WRONLY)", path, fds=(w,))
        finally:
            os.close(r)
            os.close(w)
        freeze()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        wait_for(lambda: state(writer.pid) == "D", 15, "the writer in D")
        wait_for(lambda: sleeping_in(reader.pid, {"read"}), 15, "the reader")
        try:
            diag = doctor(reader.pid, writer.pid)
            [hw] = [h for h in diag.hung if h.task.pid == writer.pid]
            assert hw.chain[0].kind == "frozen-fs" and mnt in hw.chain[0].resource
            assert hw.fix == f"fsfreeze -u {mnt}" and "is frozen" in hw.root
            [hr] = [h for h in diag.hung if h.task.pid == reader.pid]
            assert [e.kind for e in hr.chain if e.kind != "thread"] == ["pipe", "frozen-fs"]
            assert hr.fix == f"fsfreeze -u {mnt}"
        finally:
            reap([writer, reader])


@pytest.mark.timeout(90)
def test_doctor_pid_limits_every_output_and_bad_min_sleep_is_refused(procs, capsys, tmp_path):
    require("root")
    mine, theirs = ends("pipe-read")
    other_mine, other_theirs = ends("pipe-read")
    try:
        b1 = start(procs, BLOCKER, "sleep", fds=(theirs,))
        w1 = start(procs, WAITER, "pipe-read", str(mine), fds=(mine,))
        b2 = start(procs, BLOCKER, "sleep", fds=(other_theirs,))
        w2 = start(procs, WAITER, "pipe-read", str(other_mine), fds=(other_mine,))
    finally:
        for fd in (mine, theirs, other_mine, other_theirs):
            os.close(fd)
    for w in (w1, w2):
        wait_for(lambda w=w: sleeping_in(w.pid, {"read"}), 15, "the readers")
    with stopped(b1.pid), stopped(b2.pid):
        diag = doctor(w1.pid, b1.pid, w2.pid, b2.pid).restricted_to({w1.pid})
        doc = json.loads(jsonout.dumps("doctor", to_json(diag)))
        ids = {n["id"] for n in doc["graph"]["nodes"]}
        assert f"task:{w1.pid}" in ids and f"proc:{b1.pid}" in ids
        assert f"task:{w2.pid}" not in ids and f"proc:{b2.pid}" not in ids
        assert [h["pid"] for h in doc["hung"]] == [w1.pid]
        assert doc["hung"][0]["fix"] == f"kill -CONT {b1.pid}"
        root = next(n for n in doc["graph"]["nodes"] if n["id"] == f"proc:{b1.pid}")
        assert root["root"]["kind"] == "stopped"
        dot = to_dot(diag)
        assert f"task:{w1.pid}" in dot and f"task:{w2.pid}" not in dot
        code = main(["doctor", "--no-kernel-log", "--json", str(w1.pid)])
        out = json.loads(capsys.readouterr().out)
        assert code == 1 and [h["pid"] for h in out["hung"]] == [w1.pid]
    for bad in ("nan", "-1"):
        assert main(["doctor", "--min-sleep", bad]) == 2
    assert "--min-sleep" in capsys.readouterr().err


def test_doctor_runs_no_command_and_mounts_nothing(procs, monkeypatch):
    """doctor changes nothing on the machine (it used to mount fusectl): on a
    FUSE waiter, a stopped peer and the whole machine, it starts no program
    and mounts nothing."""
    require("root", "fuse")
    from fuse_scenarios import fuse_mount

    started: list = []
    real_popen = subprocess.Popen

    def spy(*args, **kwargs):
        started.append(args[0] if args else kwargs.get("args"))
        return real_popen(*args, **kwargs)

    with fuse_mount("block") as m:
        client = m.spawn(f"f = open({m.path('a')!r}, 'w'); f.write('x'); f.flush()")
        wait_for(lambda: wchan_of(client.pid).startswith("request_wait_answer"), 15, "the write")
        # Without fusectl (which the old doctor then mounted); put back after.
        for _ in range(5):  # it may be mounted more than once
            if fusectl_mounts() == 0:
                break
            subprocess.run(["umount", "/sys/fs/fuse/connections"], capture_output=True,
                           timeout=30)
        try:
            # (Other test sessions on this machine may mount it meanwhile: the
            # programs doctor starts are the check, not the mount table.)
            monkeypatch.setattr(subprocess, "Popen", spy)
            diag = diagnose(take_snapshot(stacks=True), kernel_log=False)
            monkeypatch.setattr(subprocess, "Popen", real_popen)
        finally:
            monkeypatch.setattr(subprocess, "Popen", real_popen)
            subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"],
                           capture_output=True, timeout=30)
        assert started == []
        assert any(e.waiter == f"task:{client.pid}" and e.kind == "fuse"
                   for e in diag.graph.edges)


def fusectl_mounts() -> int:
    with open("/proc/self/mounts") as f:
        return f.read().count(" fusectl ")


def wchan_of(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def test_threads_everywhere_are_seen(procs):
    """A thread (not only a process) sleeping on a pipe with a stopped writer."""
    require("root")
    r, w = os.pipe()
    try:
        blocker = start(procs, BLOCKER, "sleep", fds=(w,))
        p = start(procs, "import os, sys, threading, time\nr = int(sys.argv[1])\n"
                         "t = threading.Thread(target=os.read, args=(r, 1))\nt.start()\n"
                         "print('ready', flush=True)\nprint(t.native_id, flush=True)\n"
                         "time.sleep(600)", str(r), fds=(r,))
    finally:
        os.close(r)
        os.close(w)
    tid = int(p.stdout.readline())
    wait_for(lambda: sleeping_in(p.pid, {"read"}, tid), 15, "the thread in read")
    with stopped(blocker.pid):
        diag = doctor(p.pid, blocker.pid)
        [h] = [h for h in diag.hung if h.task.pid == tid]
        assert h.task.is_thread and f"kill -CONT {blocker.pid}" == h.fix



VFORK = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("ready\n");
    fflush(stdout);
    pid_t child = vfork();
    if (child == 0) {  /* stops before exec: the parent waits in vfork */
        kill(getpid(), SIGSTOP);
        _exit(0);
    }
    pause();
    return 0;
}
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_parent_in_vfork_waits_on_its_stopped_child(procs, tmp_path, source):
    """Also on the BPF snapshot as doctor takes it: kernel stacks only of
    tasks in D state (the vfork parent), wait channels of all."""
    require("root", *(("bpf",) if source == "bpf" else ()))
    cc = next((c for c in ("cc", "gcc", "clang") if subprocess.run(
        ["which", c], capture_output=True).returncode == 0), None)
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "v.c").write_text(VFORK)
    subprocess.run([cc, "-o", str(tmp_path / "v"), str(tmp_path / "v.c")], check=True)
    parent = subprocess.Popen([str(tmp_path / "v")], stdout=subprocess.PIPE, text=True)
    procs.append(parent)
    assert parent.stdout.readline().strip() == "ready"
    children: list[int] = []

    def child_stopped() -> bool:
        with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as f:
            children[:] = [int(x) for x in f.read().split()]
        return bool(children) and state(children[0]) == "T"

    wait_for(child_stopped, 15, "the vfork child to stop")
    child = children[0]
    try:
        if source == "bpf":
            from kpeek.sources.bpf import snapshot as bpf

            snap = bpf.take_snapshot([parent.pid, child], stacks=bpf.BLOCKED)
            assert snap.task(parent.pid).state == "D" and snap.task(parent.pid).kernel_stack
            assert snap.task(child).state == "T" and snap.task(child).kernel_stack is None
            diag = diagnose(snap, kernel_log=False)
        else:
            diag = doctor(parent.pid, child)
        [h] = [h for h in diag.hung if h.task.pid == parent.pid]
        assert (h.chain[0].kind, h.chain[0].holder, h.chain[0].certain) == (
            "vfork", f"proc:{child}", True)
        assert h.fix == f"kill -CONT {child}"
        # The kernel's hung-task report of a task still in D state is a
        # finding; of one that woke, exited, or whose pid was reused, history.
        from kpeek.diagnose.findings import _hang_is_over

        report = "INFO: task {}:{} blocked for more than 120 seconds."
        assert not _hang_is_over([report.format(h.task.comm, parent.pid)])
        assert _hang_is_over([report.format("someone-else", parent.pid)])
        assert _hang_is_over([report.format(h.task.comm, child)])  # stopped, not D
        assert _hang_is_over([report.format("python3", 2 ** 22 + 1)])  # no such pid
    finally:
        with contextlib.suppress(OSError):
            os.kill(child, 9)


QUIET = """
import os, select, socket, sys, time
shape = sys.argv[1]
print("ready", flush=True)
if shape == "epoll-listen":
    s = socket.create_server(("127.0.0.1", 0))
    e = select.epoll()
    e.register(s.fileno(), select.EPOLLIN)
    e.poll()
elif shape == "tty":
    os.read(0, 1)
elif shape == "poll-timeout":
    r, w = os.pipe()
    p = select.poll()
    p.register(r, select.POLLIN)
    p.poll(600_000)
else:
    time.sleep(600)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("shape", ["epoll-listen", "tty", "poll-timeout", "sleep"])
def test_healthy_waits_are_no_finding(procs, shape):
    """A daemon in epoll on a listening socket, a reader of a terminal, a
    poll with a timeout, a sleep: woken from outside or by a timer."""
    require("root")

    primary, secondary = pty.openpty()
    try:
        p = subprocess.Popen([PY, "-c", QUIET, shape], stdin=secondary, stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        calls = {"epoll-listen": {"epoll_wait", "epoll_pwait"}, "tty": {"read"},
                 "poll-timeout": {"poll", "ppoll"}, "sleep": {"clock_nanosleep", "nanosleep"}}
        wait_for(lambda: sleeping_in(p.pid, calls[shape]), 15, f"the {shape} wait")
        diag = doctor(p.pid)
        assert not diag.found_problems, all_text(diag)
        assert not [e for e in diag.graph.edges if e.waiter == f"task:{p.pid}"]
    finally:
        os.close(primary)
        os.close(secondary)


@pytest.mark.timeout(120)
def test_without_root_the_first_line_says_what_is_unseen():
    require("root")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*nobody, PY, "-c", "import kpeek"], capture_output=True,
                      cwd="/").returncode != 0:
        pytest.skip("this checkout is not readable by an unprivileged user")
    done = subprocess.run([*nobody, PY, "-m", "kpeek", "doctor", "--no-kernel-log"],
                          capture_output=True, text=True, timeout=100, cwd="/")
    first = done.stdout.splitlines()[0]
    assert first.startswith("note: not root:") and "kernel memory" in first, done.stdout
    assert "No problems found among what could be seen" in done.stdout or done.returncode == 1
    # BPF does not load for nobody: the snapshot is /proc's, and a note says why.
    done = subprocess.run([*nobody, PY, "-m", "kpeek", "doctor", "--json", "--no-kernel-log"],
                          capture_output=True, text=True, timeout=100, cwd="/")
    doc = json.loads(done.stdout)
    failed = [n for n in doc["notes"] if n.startswith("the BPF source failed (")]
    assert doc["source"] == "procfs" and failed and "root" in failed[0], doc["notes"]
