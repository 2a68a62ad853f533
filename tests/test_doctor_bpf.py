"""doctor on the BPF source: the same real stuck states as test_doctor_waits,
diagnosed from one BPF snapshot (tasks with their stacks, wait channels,
system calls and tracers from the iterator) and from the /proc snapshot;
both must tell the same waits, roots and fixes. And the fallback: where BPF
does not load, doctor says that it failed and why, and uses /proc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from capabilities import require
from fuse_scenarios import _die_with_parent, wait_for
from kpeek.cli import main
from kpeek.diagnose.findings import diagnose
from kpeek.diagnose.procinfo import SchedClock, read_syscall
from kpeek.errors import NotSupported
from kpeek.sources import procfs
from kpeek.sources.bpf import snapshot as bpf
from test_doctor_waits import BLOCKER, SHAPES, WAITER, ends, sleeping_in, start, waiter_args
from wait_scenarios import stopped, traced

PY = sys.executable


def both(*pids: int):
    """(diagnosis on the BPF snapshot, diagnosis on the /proc snapshot) of
    these processes, taken one right after the other."""
    b = bpf.take_snapshot(pids, stacks=bpf.BLOCKED)  # as the doctor takes it
    p = procfs.take_snapshot(pids, stacks=True)
    assert b.source == "bpf" and p.source == "procfs"
    return (diagnose(b, kernel_log=False), diagnose(p, kernel_log=False))


def told(diag, tid: int) -> tuple:
    """What doctor says of one task, without the times (they differ by the
    moment each snapshot was taken): its edges, and its finding's chain,
    root and fix."""
    edges = sorted((e.kind, e.holder, e.resource, e.any_of)
                   for e in diag.graph.edges if e.waiter == f"task:{tid}")
    found = [(tuple((e.kind, e.waiter, e.holder, e.resource) for e in h.chain), h.root, h.fix,
              h.stuck) for h in diag.hung if h.task.pid == tid]
    return edges, found


# Waits read from a system call's arguments (fd, poll set, epoll fd): the
# iterator's registers must name the same descriptors /proc/PID/syscall does.
BPF_SHAPES = ("pipe-read", "pipe-write", "unix-stream-read", "unix-dgram-write",
              "unix-seqpacket-read", "tcp-read", "tcp-write", "poll", "select", "epoll",
              "unix-connect", "unix-dgram-sendto", "ptmx-read", "ptmx-write", "eventfd-read",
              "splice-read", "splice-write", "mqueue-read", "mqueue-write")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", BPF_SHAPES)
def test_bpf_and_procfs_tell_the_same_wait_stopped_and_free(procs, shape):
    require("root", "bpf")
    kind, calls = SHAPES[shape]
    mine, theirs = ends(shape)
    try:
        blocker = start(procs, BLOCKER, "sleep", fds=(theirs,))
        waiter = start(procs, WAITER, *waiter_args(shape, mine), fds=(mine,))
    finally:
        os.close(mine)
        os.close(theirs)
    wait_for(lambda: sleeping_in(waiter.pid, calls), 15, f"the waiter in {calls}")
    task = bpf.take_snapshot([waiter.pid]).task(waiter.pid)
    # The system call from the saved user registers is /proc's, number and arguments.
    assert task.syscall is not None and task.syscall[0] >= 0
    from_proc = _proc_syscall(waiter.pid)
    assert from_proc == (task.syscall[0], list(task.syscall[1:])), (from_proc, task.syscall)
    assert read_syscall(task) == from_proc  # the doctor takes the iterator's
    with stopped(blocker.pid) as fix:
        on_bpf, on_proc = both(waiter.pid, blocker.pid)
        assert told(on_bpf, waiter.pid) == told(on_proc, waiter.pid)
        edges, found = told(on_bpf, waiter.pid)
        assert (kind, f"proc:{blocker.pid}") in {(k, h) for k, h, _, _ in edges}, edges
        [(_, root, got_fix, stuck)] = found
        assert stuck and f"pid {blocker.pid}" in root and fix in got_fix
    on_bpf, on_proc = both(waiter.pid, blocker.pid)  # continued: free again
    assert told(on_bpf, waiter.pid) == told(on_proc, waiter.pid)
    assert told(on_bpf, waiter.pid)[1] == [] and f"task:{waiter.pid}" not in on_bpf.stuck


def _proc_syscall(pid: int) -> tuple[int, list[int]] | None:
    with open(f"/proc/{pid}/syscall", "rb") as f:
        fields = f.read().split()
    return int(fields[0]), [int(x, 16) for x in fields[1:7]]


@pytest.mark.timeout(90)
def test_a_tracer_read_by_bpf_is_the_root_procfs_names(procs):
    require("root", "bpf")
    mine, theirs = ends("pipe-read")
    try:
        blocker = start(procs, BLOCKER, "sleep", fds=(theirs,))
        waiter = start(procs, WAITER, "pipe-read", str(mine), fds=(mine,))
    finally:
        os.close(mine)
        os.close(theirs)
    wait_for(lambda: sleeping_in(waiter.pid, {"read"}), 15, "the reader in read")
    with traced(blocker.pid) as tracer:
        snap = bpf.take_snapshot([blocker.pid], stacks=True)
        assert snap.task(blocker.pid).tracer == int(tracer)
        on_bpf, on_proc = both(waiter.pid, blocker.pid)
        assert told(on_bpf, waiter.pid) == told(on_proc, waiter.pid)
        [(_, root, fix, _)] = told(on_bpf, waiter.pid)[1]
        assert "stopped by its tracer" in root and tracer in fix
    assert bpf.take_snapshot([blocker.pid]).task(blocker.pid).tracer == 0


FLOCKS = """
import fcntl, sys
a = open(sys.argv[1], "r+"); fcntl.flock(a, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.readline()
b = open(sys.argv[2], "r+"); fcntl.flock(b, fcntl.LOCK_EX)
"""

FUTEX_AND_CHILD = """
import os, sys, threading, time
lock = threading.Lock(); lock.acquire()
t = threading.Thread(target=lock.acquire); t.start()
child = os.fork()
if child == 0:
    time.sleep(600); os._exit(0)
print("ready", t.native_id, child, flush=True)
os.waitpid(child, 0)
"""


@pytest.mark.timeout(90)
def test_deadlock_futex_and_wait4_agree(procs, tmp_path):
    require("root", "bpf")
    files = [tmp_path / "a", tmp_path / "b"]
    for f in files:
        f.write_text("x")
    lockers = [subprocess.Popen([PY, "-c", FLOCKS, str(files[i]), str(files[1 - i])],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                preexec_fn=_die_with_parent) for i in range(2)]
    procs.extend(lockers)
    for p in lockers:
        assert p.stdout.readline().strip() == "ready"
    for p in lockers:
        p.stdin.write("go\n")
        p.stdin.flush()
    other = subprocess.Popen([PY, "-c", FUTEX_AND_CHILD], stdout=subprocess.PIPE, text=True,
                             preexec_fn=_die_with_parent)
    procs.append(other)
    _, tid, child = other.stdout.readline().split()
    tid, child = int(tid), int(child)
    wait_for(lambda: all(_wchan(p.pid).startswith(("locks_lock", "flock")) for p in lockers),
             15, "both lockers blocked")
    wait_for(lambda: sleeping_in(other.pid, {"futex"}, tid)
             and sleeping_in(other.pid, {"wait4"}), 15, "the futex and wait4 waits")
    try:
        on_bpf, on_proc = both(*(p.pid for p in lockers), other.pid, child)
        assert [sorted(d.nodes) for d in on_bpf.deadlocks] == \
            [sorted(d.nodes) for d in on_proc.deadlocks]
        [deadlock] = on_bpf.deadlocks
        assert {on_bpf.tgid_of(n) for n in deadlock.nodes} == {p.pid for p in lockers}
        for waiter in (tid, other.pid):
            assert told(on_bpf, waiter) == told(on_proc, waiter)
        kinds = {e.kind for e in on_bpf.graph.edges if e.waiter in (f"task:{tid}",
                                                                     f"task:{other.pid}")}
        assert kinds == {"futex", "child"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


@pytest.mark.timeout(60)
def test_time_asleep_from_the_iterator_matches_proc(procs):
    require("root", "bpf")
    p = subprocess.Popen(["sleep", "600"], preexec_fn=_die_with_parent)
    procs.append(p)
    time.sleep(1.5)
    clock = SchedClock()
    [b] = bpf.take_snapshot([p.pid]).tasks
    [q] = procfs.take_snapshot([p.pid]).tasks
    assert b.exec_start is not None and b.cpu is not None and q.exec_start is None
    from_bpf, from_proc = clock.asleep_seconds(b), clock.asleep_seconds(q)
    assert from_bpf is not None and from_proc is not None
    assert from_bpf >= 1.0 and abs(from_bpf - from_proc) < 0.5, (from_bpf, from_proc)


def _doctor_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    main(["doctor", "--json", "--no-kernel-log", *argv])
    return json.loads(capsys.readouterr().out)


@pytest.mark.timeout(60)
def test_cli_uses_bpf_and_says_why_when_it_falls_back(procs, capsys, monkeypatch):
    require("root", "bpf")
    p = subprocess.Popen(["sleep", "600"], preexec_fn=_die_with_parent)
    procs.append(p)
    assert _doctor_json(capsys, str(p.pid))["source"] == "bpf"
    assert _doctor_json(capsys, "--source", "procfs", str(p.pid))["source"] == "procfs"
    assert _doctor_json(capsys, "--no-kernel-memory", str(p.pid))["source"] == "procfs"

    def refused(*args, **kwargs):
        raise NotSupported("BPF program snapshot_tasks: the verifier refused it")

    monkeypatch.setattr(bpf, "take_snapshot", refused)
    doc = _doctor_json(capsys, str(p.pid))
    assert doc["source"] == "procfs"
    assert any(n.startswith("the BPF source failed (BPF program snapshot_tasks: the verifier "
                            "refused it)") for n in doc["notes"]), doc["notes"]
    assert main(["doctor", "--json", "--source", "bpf", str(p.pid)]) == 3



# Made inside a network namespace of its own: the two ends of a unix
# socketpair or of a TCP connection over that namespace's loopback, the
# blocker holding one and the waiter reading the other, both in there too.
IN_NETNS = r"""
import ctypes, fcntl, os, signal, socket, struct, subprocess, sys
shape, blocker_code, waiter_code = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWNET
if shape == "tcp-read":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack_from("H", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)), 16)
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags[0] | 1))  # lo up
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    mine, theirs = accepted.detach(), client.detach()
else:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    mine, theirs = a.detach(), b.detach()
die = lambda: libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
blocker = subprocess.Popen([sys.executable, "-c", blocker_code, "sleep"], pass_fds=(theirs,),
                           stdout=subprocess.PIPE, text=True, preexec_fn=die)
waiter = subprocess.Popen([sys.executable, "-c", waiter_code, shape, str(mine)],
                          pass_fds=(mine,), stdout=subprocess.PIPE, text=True, preexec_fn=die)
os.close(mine); os.close(theirs)
assert blocker.stdout.readline().strip() == waiter.stdout.readline().strip() == "ready"
print("ready", blocker.pid, waiter.pid, flush=True)
sys.stdin.readline()
"""


def _netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", ["unix-stream-read", "tcp-read"])
def test_socket_peer_in_another_network_namespace(procs, shape):
    """sock_diag is asked inside the namespace of the sockets' holders: the
    peer is found, the stopped blocker is the root; continued, no finding."""
    require("root", "bpf")
    maker = subprocess.Popen([PY, "-c", IN_NETNS, shape, BLOCKER, WAITER],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             preexec_fn=_die_with_parent)
    procs.append(maker)
    blocker = waiter = None
    try:
        words = maker.stdout.readline().split()
        assert words[:1] == ["ready"], words
        blocker, waiter = int(words[1]), int(words[2])
        assert _netns(waiter) == _netns(blocker) != _netns(os.getpid())
        wait_for(lambda: sleeping_in(waiter, {"recvfrom"}), 15, "the waiter in recvfrom")
        with stopped(blocker) as fix:
            for diag in both(waiter, blocker):
                edges, found = told(diag, waiter)
                assert [(k, h) for k, h, _, _ in edges] == [("socket", f"proc:{blocker}")], \
                    (edges, diag.notes)
                [(_, root, got_fix, stuck)] = found
                assert stuck and f"pid {blocker}" in root and fix in got_fix
        on_bpf, on_proc = both(waiter, blocker)
        assert told(on_bpf, waiter) == told(on_proc, waiter)
        assert told(on_bpf, waiter)[1] == [] and f"task:{waiter}" not in on_bpf.stuck
    finally:
        for pid in (blocker, waiter):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGCONT)


def test_lock_offsets_relocated_by_libbpf_are_btfs():
    """kernlocks reads locks at offsets from CO-RE relocations (no BTF parsed
    in Python): each is the offset the kernel's BTF gives, or absent with it."""
    require("root", "bpf")
    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.sources.bpf.lock_layout import LOCK_LAYOUT, lock_layout

    layout, btf = lock_layout(), load_vmlinux_btf()
    for name, path in LOCK_LAYOUT:
        try:
            want = btf.lookup(name).offsetof(path)
        except Exception:
            want = None
        try:
            got = layout.lookup(name).offsetof(path)
        except KeyError:
            got = None
        assert got == want, (name, path, got, want)
    assert layout.lookup("struct mutex").offsetof("wait_list") is not None


def test_explain_sources_says_where_system_calls_come_from():
    require("root", "bpf")
    from kpeek.sources.explain import explain_sources, kernel_features

    features = kernel_features()
    [fact] = [f for f in explain_sources(features) if f.fact.startswith("the system call")]
    assert fact.source.startswith("BPF (bpf_task_pt_regs") == features.has_task_pt_regs
    release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    if os.uname().machine == "x86_64" and release >= (5, 15):  # built for x86-64; 5.15+
        assert features.has_task_pt_regs and fact.source.startswith("BPF")
