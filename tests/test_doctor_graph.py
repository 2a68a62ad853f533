"""doctor's logic on synthetic inputs: /proc/locks parsing, the stuck-node
fixpoint, cycle search, and kernel-lock decoding over fake kernel memory
(for lock states a live kernel must not be pushed into on purpose: a
reader-owned rwsem, a mutex owner word holding only flag bits)."""

from __future__ import annotations

import os

import pytest

from kpeek.diagnose.filelocks import parse_locks
from kpeek.diagnose.graph import WaitEdge, WaitGraph, elementary_cycles, stuck_nodes
from kpeek.diagnose.kernlocks import LockReader
from kpeek.kernel.memory import FakeMemory
from kpeek.model import Snapshot, Task

PROC_LOCKS = """\
1: FLOCK  ADVISORY  WRITE 26156 fe:00:2146808 0 EOF
1: -> FLOCK  ADVISORY  WRITE 26157 fe:00:2146808 0 EOF
2: OFDLCK ADVISORY  READ  -1 00:2a:99 100 199
3: POSIX  ADVISORY  WRITE 12 08:11:7 0 EOF
3: -> POSIX  ADVISORY  WRITE 13 08:11:7 0 9
4: LEASE  BREAKING  READ  14 00:00:0 0 EOF
5: DELEG  ACTIVE    READ  15 *NOINODE* 0 EOF
garbage line
"""


def test_parse_proc_locks():
    locks = parse_locks(PROC_LOCKS)
    assert [(x.number, x.blocked, x.kind, x.pid, x.inode) for x in locks] == [
        (1, False, "FLOCK", 26156, "254:0:2146808"),
        (1, True, "FLOCK", 26157, "254:0:2146808"),
        (2, False, "OFDLCK", -1, "0:42:99"),
        (3, False, "POSIX", 12, "8:17:7"),
        (3, True, "POSIX", 13, "8:17:7"),
        (4, False, "LEASE", 14, "0:0:0"),
        (5, False, "DELEG", 15, None),
    ]
    assert locks[2].range == " bytes 100-199" and locks[0].range == ""
    fdinfo = "pos:\t0\nlock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:5 0 EOF\n"
    assert [x.key for x in parse_locks(fdinfo)] == [("OFDLCK", "WRITE", "254:0:5", "0", "EOF")]


def task(pid: int, tgid: int | None = None, state: str = "S", wchan: str | None = None) -> Task:
    tgid = tgid or pid
    return Task(pid=pid, tgid=tgid, ppid=1, pgid=pid, sid=pid, comm=f"t{pid}", state=state,
                pidns=1, ns_pid=pid, ns_tgid=tgid, ns_ppid=1, ns_pgid=pid, ns_sid=pid,
                wchan=wchan)


def graph(tasks: list[Task], edges: list[WaitEdge]) -> WaitGraph:
    g = WaitGraph(Snapshot(source="test", tasks=tuple(tasks)))
    g.extend(edges)
    g.link_processes()
    return g


def lock(a: int, b: int, kind: str = "flock", proc: bool = True) -> WaitEdge:
    return WaitEdge(f"task:{a}", f"proc:{b}" if proc else f"task:{b}", kind, f"lock {b}")


def pipe(a: int, b: int) -> WaitEdge:
    return WaitEdge(f"task:{a}", f"proc:{b}", "pipe", "pipe", any_of=True)


def test_lock_cycle_is_stuck_and_found_once():
    g = graph([task(1), task(2), task(3)], [lock(1, 2), lock(2, 1), lock(3, 1)])
    stuck = stuck_nodes(g)
    assert {"task:1", "task:2", "task:3"} <= stuck  # 3 waits behind the circle
    cycles = elementary_cycles(g, within=stuck)
    assert len(cycles) == 1
    assert {e.waiter for e in cycles[0]} == {"task:1", "proc:2", "task:2", "proc:1"}


def test_wait_on_a_free_holder_is_not_stuck():
    g = graph([task(1), task(2, state="R")], [lock(1, 2)])
    assert stuck_nodes(g) == set()
    g = graph([task(1), task(2)], [lock(1, 2), WaitEdge("task:2", None, "rwsem", "x",
                                                        note="readers")])
    assert stuck_nodes(g) == set()  # no single holder: never claimed stuck


def test_pipe_reader_stuck_only_when_every_writer_is():
    # the reader holds its own write end: stuck
    assert stuck_nodes(graph([task(1)], [pipe(1, 1)])) == {"task:1", "proc:1"}
    # one more writer that is free (sleeping on nothing we know): not stuck
    assert stuck_nodes(graph([task(1), task(2)], [pipe(1, 1), pipe(1, 2)])) == set()
    # a multi-threaded writer with one free thread is free
    g = graph([task(1), task(2), task(3, tgid=2)], [pipe(1, 2), lock(2, 1)])
    assert stuck_nodes(g) == set()


def test_all_elementary_cycles_of_a_complete_graph():
    tasks = [task(i) for i in (1, 2, 3)]
    edges = [lock(a, b, proc=False) for a in (1, 2, 3) for b in (1, 2, 3) if a != b]
    g = graph(tasks, edges)
    assert len(elementary_cycles(g)) == 5  # three 2-cycles and two 3-cycles
    assert len(elementary_cycles(g, limit=2)) == 2


# -- kernel locks over fake memory ------------------------------------------------

WAITER = 0xFFFF888000100000
HOLDER = 0xFFFF888000200000
STACK = 0xFFFFC90000010000
LOCK_AREA = 0xFFFF888000300000
SUPER = 0xFFFF888000400000
JIFFIES = 4_295_000_000


@pytest.fixture(scope="module")
def btf():
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    from kpeek.kernel.btf import load_vmlinux_btf

    return load_vmlinux_btf()


def q(value: int) -> bytes:
    return value.to_bytes(8, "little")


def fake_kernel(btf, kind: str, owner: int, blocker: int = 0) -> tuple[FakeMemory, int]:
    """A waiter task sleeping on a lock of ``kind`` whose owner word is
    ``owner``; the waiter record sits on the waiter's stack. Returns the
    memory and the lock address."""
    ts = btf.lookup("struct task_struct")
    mem = FakeMemory()
    waiter = bytearray(ts.size)
    waiter[ts.offsetof("stack"):ts.offsetof("stack") + 8] = q(STACK)
    waiter[ts.offsetof("thread.sp"):ts.offsetof("thread.sp") + 8] = q(STACK + 0x3F00)
    waiter[ts.offsetof("blocker"):ts.offsetof("blocker") + 8] = q(blocker)
    mem.map(WAITER, bytes(waiter))
    mem.map(HOLDER, bytes(ts.size))
    inode_t = btf.lookup("struct inode")
    inode = LOCK_AREA
    lock_type = {"rwsem": "struct rw_semaphore", "mutex": "struct mutex"}[kind]
    lock_addr = inode + (inode_t.offsetof("i_rwsem") if kind == "rwsem" else inode_t.size + 0x10)
    area = bytearray(inode_t.size + 0x100)
    lt = btf.lookup(lock_type)
    head = lock_addr + lt.offsetof("wait_list")
    record = STACK + 0x3E00
    rel = lock_addr - inode
    area[rel + lt.offsetof("owner"):rel + lt.offsetof("owner") + 8] = q(owner)
    if kind == "rwsem":  # a real rwsem with a waiter has RWSEM_FLAG_WAITERS in its count
        area[rel + lt.offsetof("count"):rel + lt.offsetof("count") + 8] = q(0x2)
    area[head - inode:head - inode + 16] = q(record) + q(record)
    area[inode_t.offsetof("i_ino"):inode_t.offsetof("i_ino") + 8] = q(777)
    area[inode_t.offsetof("i_sb"):inode_t.offsetof("i_sb") + 8] = q(SUPER)
    mem.map(inode, bytes(area))
    sb = bytearray(btf.lookup("struct super_block").size)
    off = btf.lookup("struct super_block").offsetof("s_dev")
    sb[off:off + 4] = (39).to_bytes(4, "little")
    mem.map(SUPER, bytes(sb))
    stack = bytearray(16384)
    timeout = JIFFIES if kind == "rwsem" else 0
    stack[0x3E00:0x3E00 + 40] = q(head) + q(head) + q(WAITER) + q(0) + q(timeout)
    mem.map(STACK, bytes(stack))
    return mem, lock_addr


def reader(btf, mem) -> LockReader:
    return LockReader(mem, btf, {10: WAITER, 20: HOLDER})


def test_rwsem_waiter_record_on_the_stack_names_lock_holder_and_inode(btf):
    mem, lock_addr = fake_kernel(btf, "rwsem", owner=HOLDER)
    r = reader(btf, mem)
    wait = r.find_lock_wait(task(10, state="D"))
    assert (wait.kind, wait.lock, wait.holder, wait.how) == ("rwsem", lock_addr, HOLDER, "stack")
    assert r.inode_of(lock_addr) == ("0:39:777", 777)


def test_reader_owned_rwsem_has_no_single_holder(btf):
    mem, _ = fake_kernel(btf, "rwsem", owner=HOLDER | 1)
    wait = reader(btf, mem).find_lock_wait(task(10, state="D"))
    assert wait.kind == "rwsem" and wait.holder is None and "readers" in wait.no_holder


def test_mutex_owner_with_only_flag_bits_has_no_single_holder(btf):
    mem, _ = fake_kernel(btf, "mutex", owner=0x1)
    wait = reader(btf, mem).find_lock_wait(task(10, state="D"))
    assert wait.kind == "mutex" and wait.holder is None and "flag bits" in wait.no_holder


def test_mutex_waiter_followed_by_stack_garbage_is_a_mutex(btf):
    # 6.1's mutex_waiter ends before where an rwsem_waiter keeps its timeout:
    # a small number there (stack garbage) must not make the mutex an rwsem.
    mem, lock_addr = fake_kernel(btf, "mutex", owner=HOLDER | 0x1)
    mem.write(STACK + 0x3E00 + 32, q(0x1234))
    wait = reader(btf, mem).find_lock_wait(task(10, state="D"))
    assert (wait.kind, wait.lock, wait.holder) == ("mutex", lock_addr, HOLDER)


def test_blocker_field_wins_over_the_stack(btf):
    mem, lock_addr = fake_kernel(btf, "mutex", owner=HOLDER | 0x1, blocker=0)
    wait = reader(btf, mem).find_lock_wait(task(10, state="D"))
    assert (wait.kind, wait.holder, wait.how) == ("mutex", HOLDER, "stack")
    mem, lock_addr = fake_kernel(btf, "mutex", owner=HOLDER | 0x1, blocker=0)
    mem.write(WAITER + btf.lookup("struct task_struct").offsetof("blocker"), q(lock_addr))
    wait = reader(btf, mem).find_lock_wait(task(10, state="D"))
    assert (wait.kind, wait.lock, wait.holder, wait.how) == ("mutex", lock_addr, HOLDER, "blocker")


def test_blocker_type_code_is_checked_against_the_wait_list(btf):
    # The type codes changed between kernels (2 was rtmutex, now rwsem reader):
    # a blocker that says "semaphore" for a mutex is corrected by its wait_list.
    mem, lock_addr = fake_kernel(btf, "mutex", owner=HOLDER | 0x1)
    mem.write(WAITER + btf.lookup("struct task_struct").offsetof("blocker"), q(lock_addr | 1))
    wait = reader(btf, mem).find_lock_wait(task(10, state="D"))
    assert (wait.kind, wait.lock, wait.holder, wait.how) == ("mutex", lock_addr, HOLDER, "blocker")




def test_kernel_reports_are_one_line_each_with_a_pointer_to_oops(monkeypatch, capsys):
    from corpus import corpus_dir
    from kpeek import reports
    from kpeek.cli import main
    from kpeek.diagnose import findings

    corpus = corpus_dir()
    texts = [p.read_text(errors="replace") for p in sorted(corpus.iterdir())] if corpus else []
    sample = next((t for t in texts if t.startswith("TITLE: WARNING in")), None)
    if sample is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kernel report corpus not found (see test_reports_corpus.corpus_dir)")
        pytest.skip("no report corpus on this machine")
    header, _, log = sample.partition("\n\n")
    title = header.splitlines()[0].removeprefix("TITLE: ")
    monkeypatch.setattr(reports, "read_kmsg", lambda: log)
    found, note = findings.recent_reports()
    assert note is None and [r.title for r in found] == [title]

    monkeypatch.setattr(findings, "diagnose", _only_reports(findings.diagnose))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"KERNEL REPORT: {title}" in out and "kpeek oops" in out


def _only_reports(diagnose):
    """diagnose() on an empty snapshot: only the kernel log can find anything."""
    def run(snapshot, **kw):
        return diagnose(Snapshot(source="test", tasks=()), **kw)
    return run


def test_unreadable_descriptor_tables_forbid_nobody_holds_it_on_either_source():
    """"No process holds the other end" needs every table read: the BPF
    source's note for a process the iterators skip counts as procfs's does."""
    from kpeek.diagnose.graph import WaitGraph
    from kpeek.model import Snapshot

    for note in ("descriptors of 1 processes not readable (permission denied)",
                 "pid 1: descriptors not readable (cannot read the descriptors of pid 1)"):
        assert not WaitGraph(Snapshot("x", (), notes=(note,))).all_descriptors_seen()
    assert WaitGraph(Snapshot("bpf", (), notes=("pid 1 read from /proc",))).all_descriptors_seen()
