"""doctor on real SysV IPC waits (semop, msgrcv), on both sources: who last
took a semaphore or sent to a queue is named (inferred), circles of such
waits are deadlocks, a semaphore whose last taker exited is a root, and a
wait that anyone may end stays quiet. Also inside another IPC namespace."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fuse_scenarios import _die_with_parent, wait_for
from sysv_scenarios import SCRIPT
from test_doctor_waits import sleeping_in
from wait_scenarios import diagnosis_on

PY = sys.executable
SEMOP = {"semop", "semtimedop"}  # glibc's semop() is the semtimedop system call


def run(procs, *args: object, ipc_of: int | None = None) -> subprocess.Popen:
    """The scenario program in ``args``' mode (in ``ipc_of``'s IPC namespace)."""
    argv = [PY, "-c", SCRIPT, *map(str, args)]
    if ipc_of is not None:
        argv = ["nsenter", f"--ipc=/proc/{ipc_of}/ns/ipc", "--", *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=_die_with_parent)
    procs.append(p)
    return p


def go(*ps: subprocess.Popen) -> None:
    for p in ps:
        p.stdin.write("\n")
        p.stdin.flush()


def diagnosis(source: str, *pids: int):
    return diagnosis_on(source).restricted_to(set(pids))


def semaphore_owner(procs, n: int, ipc_of: int | None = None) -> tuple[subprocess.Popen, int]:
    owner = run(procs, "make-sems", n, ipc_of=ipc_of)
    return owner, int(owner.stdout.readline())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unshared", [False, True], ids=["here", "own-ipc-namespace"])
def test_semaphore_abba_is_a_deadlock(procs, doctor_source, unshared):
    ns = None
    if unshared:  # a process that holds a new IPC namespace for the others to enter
        holder = subprocess.Popen(["unshare", "--ipc", "sleep", "600"],
                                  preexec_fn=_die_with_parent)
        procs.append(holder)
        wait_for(lambda: _ipc_ns(holder.pid) != _ipc_ns("self"), 10, "a new IPC namespace")
        ns = holder.pid
    _, semid = semaphore_owner(procs, 2, ipc_of=ns)
    a = run(procs, "take", semid, 0, 1, ipc_of=ns)
    b = run(procs, "take", semid, 1, 0, ipc_of=ns)
    assert a.stdout.readline() == b.stdout.readline() == "took\n"
    go(a, b)
    for p in (a, b):
        wait_for(lambda p=p: sleeping_in(p.pid, SEMOP), 15, "both in semop")
    diag = diagnosis(doctor_source, a.pid, b.pid)
    [deadlock] = diag.deadlocks
    edges = {(e.waiter, e.holder, e.resource) for c in deadlock.cycles for e in c
             if e.kind != "thread"}
    assert edges == {
        (f"task:{a.pid}", f"proc:{b.pid}", f"SysV semaphore 1 of set {semid} (value 0, needs 1)"),
        (f"task:{b.pid}", f"proc:{a.pid}", f"SysV semaphore 0 of set {semid} (value 0, needs 1)"),
    }
    assert all(not e.certain for c in deadlock.cycles for e in c if e.kind == "sysv-sem")


def _ipc_ns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/ipc")


@pytest.mark.timeout(60)
def test_a_semaphore_whose_last_taker_exited_is_the_root(procs, doctor_source):
    _, semid = semaphore_owner(procs, 1)
    taker = run(procs, "take-exit", semid, 0)
    assert taker.wait(timeout=30) == 0
    waiter = run(procs, "take-exit", semid, 0)
    wait_for(lambda: sleeping_in(waiter.pid, SEMOP), 15, "the waiter in semop")
    diag = diagnosis(doctor_source, waiter.pid)
    [hung] = [h for h in diag.hung if h.task.pid == waiter.pid]
    assert hung.stuck and f"pid {taker.pid}, the last to take SysV semaphore 0 of set {semid}" \
        in hung.root and "has exited" in hung.root
    assert "SEM_UNDO" in hung.fix


@pytest.mark.timeout(60)
def test_waiting_for_each_others_reply_on_message_queues_is_a_deadlock(procs, doctor_source):
    owner = run(procs, "make-queues", 2)
    q1, q2 = map(int, owner.stdout.readline().split())
    c = run(procs, "send-recv", q1, q2)  # sends to q1, then waits twice on q2
    d = run(procs, "send-recv", q2, q1)
    assert c.stdout.readline() == d.stdout.readline() == "sent\n"
    go(c, d)
    for p in (c, d):
        wait_for(lambda p=p: sleeping_in(p.pid, {"msgrcv"}), 15, "both in msgrcv")
    diag = diagnosis(doctor_source, c.pid, d.pid)
    [deadlock] = diag.deadlocks
    edges = {(e.waiter, e.holder, e.resource, e.kind) for cy in deadlock.cycles for e in cy
             if e.kind != "thread"}
    assert edges == {(f"task:{c.pid}", f"proc:{d.pid}", f"a message on SysV queue {q2}",
                      "sysv-msg"),
                     (f"task:{d.pid}", f"proc:{c.pid}", f"a message on SysV queue {q1}",
                      "sysv-msg")}


@pytest.mark.timeout(60)
def test_waits_that_a_free_process_may_end_are_no_finding(procs, doctor_source):
    # A consumer that took the last item itself; a receiver whose sender is
    # alive and free: both wait for someone who can still act.
    _, semid = semaphore_owner(procs, 1)
    consumer = run(procs, "take", semid, 0, 0)
    assert consumer.stdout.readline() == "took\n"
    go(consumer)
    owner = run(procs, "make-queues", 2)
    q1, q2 = map(int, owner.stdout.readline().split())
    sender = run(procs, "send-recv", q2, q1)  # sends to q2, waits on q1 (no one sent)
    receiver = run(procs, "send-recv", q1, q2)  # its first receive gets sender's message
    assert sender.stdout.readline() == receiver.stdout.readline() == "sent\n"
    go(receiver)  # receives sender's message, waits for a second one from it
    wait_for(lambda: sleeping_in(consumer.pid, SEMOP), 15, "the consumer in semop")
    wait_for(lambda: sleeping_in(receiver.pid, {"msgrcv"}), 15, "the receiver in msgrcv")
    pids = (consumer.pid, receiver.pid, sender.pid)
    diag = diagnosis(doctor_source, *pids)
    assert not diag.found_problems
    # The receiver's wait is seen, and its sender (asleep on its stdin) is free.
    assert any(e.waiter == f"task:{receiver.pid}" and e.holder == f"proc:{sender.pid}"
               for e in diag.graph.edges)
