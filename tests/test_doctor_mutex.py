"""doctor on real glibc pthread mutexes and rwlocks: the holder's tid that
glibc keeps beside the futex word names the holder, so two threads locking
two mutexes in opposite orders are a deadlock between those threads (not
just "a process whose threads all wait"), a mutex locked twice by its owner
is its own root, a process-shared mutex in shared memory links two
processes, and a reader or a writer waiting behind an rwlock's writer waits
for that thread (or process). Both sources."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fuse_scenarios import _die_with_parent, wait_for, wchan
from wait_scenarios import diagnosis_on

PY = sys.executable

# argv: threads | relock | processes | rwthreads | rwprocesses. Prints the
# tids that will block, one line.
LOCKERS = r'''
import ctypes, mmap, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
mode = sys.argv[1]

def mutexes(shared):
    if not shared:
        return ctypes.create_string_buffer(40), ctypes.create_string_buffer(40)
    area = mmap.mmap(-1, 4096, mmap.MAP_SHARED)  # inherited by the fork below
    attr = ctypes.create_string_buffer(8)
    libc.pthread_mutexattr_init(attr)
    libc.pthread_mutexattr_setpshared(attr, 1)  # PTHREAD_PROCESS_SHARED
    pair = [(ctypes.c_char * 40).from_buffer(area, off) for off in (0, 64)]
    for m in pair:
        libc.pthread_mutex_init(m, attr)
    return pair

def rwlock(shared):
    if not shared:
        lock = ctypes.create_string_buffer(56)  # sizeof(pthread_rwlock_t)
        libc.pthread_rwlock_init(lock, None)
        return lock
    area = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    attr = ctypes.create_string_buffer(8)
    libc.pthread_rwlockattr_init(attr)
    libc.pthread_rwlockattr_setpshared(attr, 1)
    lock = (ctypes.c_char * 56).from_buffer(area, 0)  # at a page's start
    libc.pthread_rwlock_init(lock, attr)
    return lock

def lock_both(first, second, barrier_wait):
    libc.pthread_mutex_lock(first)
    barrier_wait()
    libc.pthread_mutex_lock(second)

if mode == "threads":
    m1, m2 = mutexes(False)
    barrier = threading.Barrier(2)
    tids = []
    def run(a, b):
        tids.append(threading.get_native_id())
        lock_both(a, b, barrier.wait)
    for a, b in ((m1, m2), (m2, m1)):
        threading.Thread(target=run, args=(a, b), daemon=True).start()
    while len(tids) < 2:
        time.sleep(0.01)
    os.write(1, b"%d %d\n" % tuple(tids))
    time.sleep(3600)
elif mode == "rwthreads":
    # T1 writes the rwlock, then wants the mutex; T2 holds the mutex, then
    # wants to read; T3 wants to write: T1 and T2 deadlock, T3 waits for T1.
    rw, (m, _) = rwlock(False), mutexes(False)
    barrier, written, tids = threading.Barrier(2), threading.Event(), {}
    def t1():
        tids[1] = threading.get_native_id()
        libc.pthread_rwlock_wrlock(rw)
        written.set()
        barrier.wait()
        libc.pthread_mutex_lock(m)
    def t2():
        tids[2] = threading.get_native_id()
        libc.pthread_mutex_lock(m)
        barrier.wait()
        libc.pthread_rwlock_rdlock(rw)
    def t3():
        written.wait()
        tids[3] = threading.get_native_id()
        libc.pthread_rwlock_wrlock(rw)
    for run in (t1, t2, t3):
        threading.Thread(target=run, daemon=True).start()
    while len(tids) < 3:
        time.sleep(0.01)
    os.write(1, b"%d %d %d\n" % (tids[1], tids[2], tids[3]))
    time.sleep(3600)
elif mode == "rwprocesses":
    # The parent writes a process-shared rwlock and waits for its child,
    # which wants to read it.
    rw = rwlock(True)
    libc.pthread_rwlock_wrlock(rw)
    child = os.fork()
    if child == 0:
        libc.pthread_rwlock_rdlock(rw)
        os._exit(0)
    os.write(1, b"%d %d\n" % (os.getpid(), child))
    os.waitpid(child, 0)
elif mode == "relock":
    m, _ = mutexes(False)
    os.write(1, b"%d\n" % os.getpid())
    libc.pthread_mutex_lock(m)
    libc.pthread_mutex_lock(m)
else:
    m1, m2 = mutexes(True)
    to_parent, to_child = os.pipe(), os.pipe()  # (read, write) each: a two-way barrier
    child = os.fork()
    if child == 0:
        lock_both(m2, m1, lambda: (os.write(to_parent[1], b"x"), os.read(to_child[0], 1)))
        os._exit(0)
    os.write(1, b"%d %d\n" % (os.getpid(), child))
    lock_both(m1, m2, lambda: (os.read(to_parent[0], 1), os.write(to_child[1], b"y")))
'''


def lockers(procs, mode: str) -> list[int]:
    p = subprocess.Popen([PY, "-c", LOCKERS, mode], stdout=subprocess.PIPE, text=True,
                         preexec_fn=_die_with_parent)
    procs.append(p)
    tids = [int(x) for x in p.stdout.readline().split()]
    for tid in tids:
        wait_for(lambda tid=tid: wchan(tid).startswith(("futex", "do_wait")), 15,
                 "the lockers in futex (or wait4)", about=[p])
    if mode.endswith("processes"):  # the forked child is killed with its parent (by pid)
        from fuse_scenarios import ByPid

        procs.append(ByPid(tids[-1]))
    return tids


def deadlocked_tasks(diag) -> list[set[str]]:
    return [{e.waiter for c in d.cycles for e in c if e.kind == "futex"} for d in diag.deadlocks]


@pytest.mark.timeout(60)
def test_threads_locking_two_mutexes_in_opposite_orders(procs, doctor_source):
    a, b = lockers(procs, "threads")
    diag = diagnosis_on(doctor_source)
    assert {f"task:{a}", f"task:{b}"} in deadlocked_tasks(diag)
    assert mutex_edges(diag) == {(f"task:{a}", f"task:{b}"), (f"task:{b}", f"task:{a}")}


def mutex_edges(diag, lock: str = "a pthread mutex") -> set[tuple[str, str]]:
    """waiter -> holder thread, of the waits named by the holder field of a ``lock``."""
    return {(e.waiter, e.holder) for e in diag.graph.edges if f"({lock}" in e.resource}


def deadlocked(diag) -> list[set[str]]:
    """The waiters of each deadlock, whatever their waits."""
    return [{e.waiter for c in d.cycles for e in c} for d in diag.deadlocks]


@pytest.mark.timeout(60)
def test_a_mutex_locked_twice_by_its_owner_is_its_own_root(procs, doctor_source):
    [pid] = lockers(procs, "relock")
    diag = diagnosis_on(doctor_source)
    [hung] = [h for h in diag.hung if h.task.pid == pid]
    assert hung.stuck and "already holds" in hung.root and "non-recursive" in hung.root


@pytest.mark.timeout(60)
def test_a_process_shared_mutex_links_two_processes(procs, doctor_source):
    parent, child = lockers(procs, "processes")
    diag = diagnosis_on(doctor_source)
    assert {f"task:{parent}", f"task:{child}"} in deadlocked_tasks(diag)
    # named by the owner field, not only "any process that maps it"
    assert mutex_edges(diag) == {(f"task:{parent}", f"task:{child}"),
                                 (f"task:{child}", f"task:{parent}")}


@pytest.mark.timeout(60)
def test_a_reader_and_a_writer_wait_for_the_rwlocks_writer(procs, doctor_source):
    t1, t2, t3 = lockers(procs, "rwthreads")
    diag = diagnosis_on(doctor_source)
    assert {f"task:{t1}", f"task:{t2}"} in deadlocked_tasks(diag)
    assert mutex_edges(diag, "a pthread rwlock") == {(f"task:{t2}", f"task:{t1}"),
                                                     (f"task:{t3}", f"task:{t1}")}
    assert mutex_edges(diag) == {(f"task:{t1}", f"task:{t2}")}
    [wait] = [e for e in diag.graph.edges if e.waiter == f"task:{t2}"]
    assert "waited for to read" in wait.resource and "__cur_writer" in wait.source


@pytest.mark.timeout(60)
def test_a_process_shared_rwlock_links_a_reader_to_the_writing_process(procs, doctor_source):
    """The lock lies at the start of its page: nothing is mapped before it."""
    parent, child = lockers(procs, "rwprocesses")
    diag = diagnosis_on(doctor_source)
    assert mutex_edges(diag, "a pthread rwlock") == {(f"task:{child}", f"task:{parent}")}
    # the parent waits for its child in wait4: a cycle of the two
    assert any({f"task:{parent}", f"task:{child}"} <= tasks for tasks in deadlocked(diag))
