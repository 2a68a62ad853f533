"""The BPF snapshot against the /proc snapshot, on real process families.

Both sources look at the same sleeping processes; they must agree on every
task field /proc gives, on each descriptor, its close-on-exec bit, and on
which descriptors share one open file (BPF from struct file addresses, /proc
from kcmp). BPF-only facts (refcounts, addresses, stacks) are checked
against what the family is known to hold.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import pytest

from capabilities import require, time_scale
from kpeek.errors import UsageError
from kpeek.ids import show_pointer
from kpeek.model import OpenFile, Snapshot
from scenarios import MUTEX_WAIT, PARENT_OF_THREE, PIPE_FORK_DUP2, children_of, family

pytestmark = pytest.mark.timeout(60)

# sockets, memfd, close-on-exec set and cleared, a deleted file, a thread,
# and a child that inherits all of it.
SOCKETS_MEMFD_CLOEXEC = """
import tempfile, threading
s1, s2 = socket.socketpair()
m = os.memfd_create("kpeek-memfd")
os.write(m, b"x" * 100)
c = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
d = os.dup2(c, 40, inheritable=False)
e = os.dup(c)
os.set_inheritable(e, True)
path = tempfile.mktemp(prefix="kpeek-deleted-")
gone = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.write(gone, b"abc")
os.unlink(path)
threading.Thread(target=hold, daemon=True).start()
child = os.fork()
if child == 0:
    hold()
report(parent=os.getpid(), child=child, s1=s1.fileno(), s2=s2.fileno(), memfd=m, c=c, d=d, e=e,
       gone=gone)
"""

# Run under `unshare --pid --fork`: this script is pid 1 of a new PID
# namespace, with a child of its own.
PID_NAMESPACE = """
r, w = os.pipe()
child = os.fork()
if child == 0:
    hold()
report(ns_pid=os.getpid(), ns_child=child)
"""


def _kernel_has(struct: str, member: str) -> bool:
    from kpeek.kernel.btf import load_vmlinux_btf

    try:
        load_vmlinux_btf().lookup(struct).offsetof(member)
    except Exception:
        return False
    return True


@pytest.fixture(autouse=True)
def _bpf() -> None:
    require("bpf")


def _snapshots(tgids: list[int], **kwargs) -> tuple[Snapshot, Snapshot]:
    from kpeek.sources import procfs
    from kpeek.sources.bpf import snapshot as bpf

    return bpf.take_snapshot(tgids, **kwargs), procfs.take_snapshot(tgids, **kwargs)


def _task_facts(snap: Snapshot) -> dict[int, tuple]:
    return {
        t.pid: (t.tgid, t.ppid, t.pgid, t.sid, t.comm, t.state, t.pidns, t.ns_pid, t.ns_tgid,
                t.ns_ppid, t.ns_pgid, t.ns_sid, t.uid, t.start_time, t.namespaces)
        for t in snap.tasks
    }  # fmt: skip


def _assert_wchans_agree(b: Snapshot, p: Snapshot) -> None:
    """Where /proc names a wchan, BPF names the same; BPF may name one where
    /proc, a moment apart, said 0 (a blocked task still on its runqueue
    under delayed dequeue, which get_wchan() does not look into)."""
    procs = {t.pid: t.wchan for t in p.tasks}
    for t in b.tasks:
        if procs[t.pid] is not None:
            assert t.wchan == procs[t.pid], (t.pid, t.wchan, procs[t.pid])
        if t.state == "S":
            assert t.wchan, t


def _partition(snap: Snapshot) -> set[frozenset[tuple[int, int]]]:
    groups: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for d in snap.fds:
        groups[d.open_file].add((d.tgid, d.fd))
    return {frozenset(g) for g in groups.values()}


def _file_facts(snap: Snapshot) -> dict[tuple[int, int], tuple]:
    facts = {}
    for d in snap.fds:
        f = snap.open_files[d.open_file]
        i = snap.inodes[f.inode]
        facts[(d.tgid, d.fd)] = (d.cloexec, f.path, f.pos, f.flags, f.mnt_id, f.inode, i.type,
                                 i.nlink, i.size, i.dev, i.ino)  # fmt: skip
    return facts


def _wait_sleeping(tgids: list[int], timeout: float = 10) -> None:
    """Until every thread of ``tgids`` sleeps: a family reports before its
    last child has reached pause(), and a running task has no stable state."""
    deadline = time.monotonic() + timeout * time_scale()
    while time.monotonic() < deadline:
        states = [
            Path(f"/proc/{tgid}/task/{tid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            for tgid in tgids
            for tid in os.listdir(f"/proc/{tgid}/task")
        ]
        if all(s == b"S" for s in states):
            return
        time.sleep(0.01)
    raise TimeoutError(f"tasks of {tgids} did not all go to sleep")


def _assert_agree(tgids: list[int]) -> tuple[Snapshot, Snapshot]:
    _wait_sleeping(tgids)
    b, p = _snapshots(tgids, all_namespaces=True)
    assert b.source == "bpf" and p.source == "procfs"
    tb, tp = _task_facts(b), _task_facts(p)
    assert tb == tp, {pid: (tb[pid], tp.get(pid)) for pid in tb if tb[pid] != tp.get(pid)}
    _assert_wchans_agree(b, p)
    assert _file_facts(b) == _file_facts(p)
    assert _partition(b) == _partition(p)
    assert {d.tgid for d in b.fds} == set(tgids)
    return b, p


def _holders(snap: Snapshot, tgid: int, fd: int) -> list[tuple[int, int]]:
    (d,) = [d for d in snap.fds if (d.tgid, d.fd) == (tgid, fd)]
    return [(h.tgid, h.fd) for h in snap.holders(d.open_file)]


def _open_file(snap: Snapshot, tgid: int, fd: int) -> OpenFile:
    (d,) = [d for d in snap.fds if (d.tgid, d.fd) == (tgid, fd)]
    return snap.open_files[d.open_file]


def test_pipe_fork_dup2_family_agrees() -> None:
    with family(PIPE_FORK_DUP2) as fam:
        info = fam.info
        parent, child = info["parent"], info["child"]
        b, _ = _assert_agree([parent, child])
        # The write end: parent's w, child's w and the child's stdout.
        w_holders = _holders(b, parent, info["w"])
        assert sorted(w_holders) == sorted([(parent, info["w"]), (child, info["w"]), (child, 1)])
        w_file = _open_file(b, parent, info["w"])
        # Nothing else holds this pipe: the kernel's f_count is exactly our count.
        assert w_file.refcount == 3
        assert w_file.address and w_file.f_mode is not None
        # Its id is the hash its address is shown as (filemodel.OpenFile).
        assert all(show_pointer(f.address) == "#" + f.id for f in b.open_files.values())
        # Two open()s of one path: one inode, two open files.
        a, bb = _holders(b, parent, info["a"]), _holders(b, parent, info["b"])
        assert a != bb
        fa, fb = (_open_file(b, parent, info[k]) for k in "ab")
        assert fa.inode == fb.inode and fa.address != fb.address
        os.unlink(info["path"])


def test_sockets_memfd_cloexec_thread_family_agrees() -> None:
    with family(SOCKETS_MEMFD_CLOEXEC) as fam:
        info = fam.info
        parent, child = info["parent"], info["child"]
        b, _ = _assert_agree([parent, child])
        threads = [t for t in b.tasks if t.tgid == parent and t.is_thread]
        assert len(threads) == 1 and threads[0].state == "S"
        facts = _file_facts(b)
        assert facts[(parent, info["d"])][0] is True  # dup2(..., inheritable=False)
        assert facts[(parent, info["e"])][0] is False  # dup() then set_inheritable
        assert facts[(parent, info["memfd"])][6] == "memfd"
        assert facts[(parent, info["s1"])][6] == "socket"
        assert facts[(parent, info["gone"])][1].endswith(" (deleted)")
        assert facts[(parent, info["gone"])][7] == 0  # nlink of an unlinked file


def test_pid_namespace_family_agrees() -> None:
    with family(PID_NAMESPACE, prefix=("unshare", "--pid", "--fork")) as fam:
        (init,) = children_of(fam.pid)
        (child,) = children_of(init)
        b, _ = _assert_agree([fam.pid, init, child])
        by_pid = {t.pid: t for t in b.tasks}
        assert by_pid[init].ns_pid == 1 and by_pid[init].ns_ppid == 0
        assert by_pid[child].ns_pid == fam.info["ns_child"] and by_pid[child].ns_ppid == 1
        assert by_pid[init].pidns != by_pid[fam.pid].pidns
        assert by_pid[init].pidns == by_pid[child].pidns


def test_stacks_wchan_blocker_and_addresses() -> None:
    from kpeek.sources.bpf.tasks import task_addresses

    with family(PIPE_FORK_DUP2) as fam:
        parent = fam.info["parent"]
        _wait_sleeping([parent])
        b, p = _snapshots([parent], threads=False, stacks=True)
        (bt,), (pt,) = b.tasks, p.tasks
        # The kernel formats both (%pB, %ps): they match /proc to the letter.
        assert bt.kernel_stack and bt.kernel_stack == pt.kernel_stack
        _assert_wchans_agree(b, p)
        # pause() holds no lock: 0 where the kernel has task_struct.blocker (6.16+)
        assert bt.blocker == (0 if _kernel_has("struct task_struct", "blocker") else None)
        assert bt.address == task_addresses()[parent]
        os.unlink(fam.info["path"])


def test_a_kernel_without_bpf_loop_gets_stacks_from_proc() -> None:
    """A task record without has_stack (what the program writes on a kernel
    lacking bpf_loop, such as 5.15) takes its wait channel and stack from
    /proc, exactly as the procfs source shows them."""
    from kpeek.sources import procfs
    from kpeek.sources.bpf import snapshot as bpf

    with family(PIPE_FORK_DUP2) as fam:
        parent = fam.info["parent"]
        _wait_sleeping([parent])
        with bpf.filtered([parent], False, False):
            records, _ = bpf._task_records(bpf.iterate("snapshot", "snapshot_tasks", [parent]))
        (rec,) = [r for r in records if r[3] == parent]
        assert rec[-1] == 1  # this kernel has the helpers
        task = bpf._task((*rec[:-1], 0), None, True, False)
        (pt,) = procfs.take_snapshot([parent], threads=False, stacks=True).tasks
        assert task.wchan and task.wchan == pt.wchan
        assert task.kernel_stack and task.kernel_stack == pt.kernel_stack


def test_filters_and_errors() -> None:
    from kpeek.sources import take_snapshot
    from kpeek.sources.bpf import snapshot as bpf

    with family(SOCKETS_MEMFD_CLOEXEC) as fam:
        parent = fam.info["parent"]
        leaders = bpf.take_snapshot([parent], threads=False, files=False)
        assert [t.pid for t in leaders.tasks] == [parent] and leaders.fds == ()
        auto = take_snapshot("auto", pids=[parent])
        assert auto.source == "bpf" and len([t for t in auto.tasks if t.tgid == parent]) == 2
        everything = bpf.take_snapshot()
        assert {parent, fam.info["child"], os.getpid()} <= {t.pid for t in everything.tasks}
    with pytest.raises(UsageError):
        bpf.take_snapshot([2**22 + 12345])


def test_tasks_exiting_during_snapshots_are_normal() -> None:
    """Processes that start and exit while snapshots run never break one."""
    import subprocess
    import threading

    from kpeek.sources.bpf import snapshot as bpf

    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["/bin/true"], check=False)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(5):
            snap = bpf.take_snapshot()
            assert os.getpid() in {t.pid for t in snap.tasks}
            assert all(d.open_file in snap.open_files for d in snap.fds)
    finally:
        stop.set()
        worker.join(30)


def test_no_compiler_and_no_cache_are_needed(tmp_path) -> None:
    """The shipped objects load with no clang on PATH and no writable cache
    folder (HOME and XDG_CACHE_HOME unwritable), and nothing is written."""
    import subprocess
    import sys

    require("bpf")
    code = (
        "import os\n"
        "from kpeek.sources.bpf.snapshot import take_snapshot\n"
        "snap = take_snapshot([os.getpid()])\n"
        "print(snap.source, len(snap.tasks), len(snap.fds))\n"
    )
    env = dict(os.environ, PATH=str(tmp_path), HOME="/proc/sys", XDG_CACHE_HOME="/proc/sys/x")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("bpf 1 "), out.stdout + out.stderr
    assert not list(tmp_path.iterdir())


def test_no_btf_or_no_object_is_one_clean_line(monkeypatch) -> None:
    from kpeek.errors import NotSupported
    from kpeek.sources.bpf import loaded

    with pytest.raises(NotSupported, match=r"lacks its BPF object nosuch\.bpf\.o.*--source procfs"):
        loaded.bpf_object("nosuch")
    monkeypatch.setattr(loaded, "VMLINUX_BTF", "/nonexistent/vmlinux")
    with pytest.raises(NotSupported, match=r"no BTF.*CONFIG_DEBUG_INFO_BTF"):
        loaded.bpf_object("nosuch")


# 600 separate opens: the file records overflow the iterator's 32 KiB
# seq_file buffer several times, each overflow dropping a record that the
# kernel shows again at the start of the next buffer.
# More open files than a few-process snapshot's "seen" marks hold (4,096:
# loaded.py), then a dup of each of the first hundred, whose marks are
# evicted by then: their paths come again, and must be taken as the same files.
MANY_FILES = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(5000)]
dups = [os.dup(fd) for fd in fds[:100]]
report(pid=os.getpid(), first=fds[0], last=fds[-1])
"""


def test_many_files_overflow_the_iterator_buffer() -> None:
    with family(MANY_FILES) as fam:
        pid = fam.info["pid"]
        b, _ = _assert_agree([pid])
        assert len(b.fds_of(pid)) >= 5100
        assert not [n for n in b.notes if "read from /proc (bpf_d_path" in n], b.notes
        assert len({d.open_file for d in b.fds_of(pid)}) == len(b.fds_of(pid)) - 100


def test_whole_system_snapshot_misses_no_process() -> None:
    """Every process that lives through both snapshots is in both; one the
    iterators cannot see (pid 1 on some sandboxes) is filled in from /proc."""
    from kpeek.sources import procfs
    from kpeek.sources.bpf import snapshot as bpf

    before = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    b = bpf.take_snapshot(files=False)
    p = procfs.take_snapshot(files=False)
    after = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    stable = before & after
    assert stable <= {t.tgid for t in b.tasks}
    assert stable <= {t.tgid for t in p.tasks}
    assert b.source == "bpf"


def test_a_failure_while_decoding_is_the_error_told_not_the_readers(monkeypatch) -> None:
    """A whole-system snapshot that fails while this thread decodes raises
    that failure, not one of its reader threads', and leaves none reading."""
    import threading

    from kpeek.sources.bpf import procfiles
    from kpeek.sources.bpf import snapshot as bpf

    def rows_fail(*args):
        raise RuntimeError("the rows thread failed too")

    def decoding_fails(*args):
        raise ValueError("decoding failed")

    monkeypatch.setattr(procfiles, "read_parts", rows_fail)
    monkeypatch.setattr(bpf, "_task_records", decoding_fails)
    with pytest.raises(ValueError, match="decoding failed"):
        bpf.take_snapshot(None, process_files=True)
    assert not [t for t in threading.enumerate() if t.name == "kpeek-reader"]
    monkeypatch.undo()  # and the next snapshot is whole
    assert bpf.take_snapshot(None, process_files=True).process_files


def test_hostile_names_arrive_byte_for_byte(tmp_path) -> None:
    """comm and path bytes (escapes, newline, invalid UTF-8) come through
    the BPF records unchanged, as /proc gives them."""
    from kpeek.textsafe import encode

    comm = b"\x1b[31mX\n<b>\xff"
    path = tmp_path / "evil\nname<script>\x1b[2J\xff".encode("utf-8", "surrogateescape").decode(
        "utf-8", "surrogateescape"
    )
    script = f"""
with open("/proc/self/comm", "wb") as f:
    f.write({comm!r})
fd = os.open({os.fsencode(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
report(pid=os.getpid(), fd=fd)
"""
    with family(script) as fam:
        pid, fd = fam.info["pid"], fam.info["fd"]
        b, _ = _assert_agree([pid])
        (task,) = b.tasks
        assert encode(task.comm) == comm
        assert encode(_open_file(b, pid, fd).path) == os.fsencode(path)


def test_concurrent_snapshots_keep_their_own_filters() -> None:
    """Threads (as in kpeek serve) asking for different pids each get theirs."""
    import threading

    from kpeek.sources.bpf import snapshot as bpf

    results: list[tuple[int, set[int]]] = []

    def take(pid: int) -> None:
        for _ in range(5):
            results.append((pid, {t.tgid for t in bpf.take_snapshot([pid], files=True).tasks}))

    workers = [threading.Thread(target=take, args=(p,)) for p in (os.getpid(), os.getppid())]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert len(results) == 10 and all(seen == {pid} for pid, seen in results)


# A stopped child and a zombie child (its parent never reaps it).
STOPPED_AND_ZOMBIE = """
stopped = os.fork()
if stopped == 0:
    hold()
os.kill(stopped, signal.SIGSTOP)
while open(f"/proc/{stopped}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
    time.sleep(0.01)  # on a loaded machine the stop takes a moment to land
zombie = os.fork()
if zombie == 0:
    os._exit(0)
while open(f"/proc/{zombie}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.01)
report(parent=os.getpid(), stopped=stopped, zombie=zombie)
"""


def test_stopped_and_zombie_states_agree() -> None:
    from kpeek.sources import procfs
    from kpeek.sources.bpf import snapshot as bpf
    from kpeek.sources.bpf.snapshot import state_letter

    with family(STOPPED_AND_ZOMBIE) as fam:
        info = fam.info
        tgids = [info["parent"], info["stopped"], info["zombie"]]
        _wait_sleeping([info["parent"]])
        b = bpf.take_snapshot(tgids, all_namespaces=True)
        p = procfs.take_snapshot(tgids, all_namespaces=True)
        assert _task_facts(b) == _task_facts(p)
        states = {t.pid: t.state for t in b.tasks}
        assert states[info["stopped"]] == "T" and states[info["zombie"]] == "Z"
        assert _file_facts(b) == _file_facts(p)
    # The kernel's own encoding (task_state_index) for the states a test
    # cannot hold still: idle kernel threads, parked, traced, frozen.
    assert [state_letter(s, 0) for s in (0, 1, 2, 4, 8, 0x40, 0x402, 0x8002, 0x1000)] == list(
        "RSDTtPIDD"
    )
    assert state_letter(0, 0x20) == "Z" and state_letter(0, 0x10) == "X"


def test_blocker_names_the_mutex_a_task_waits_on() -> None:
    import platform

    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.sources.bpf import snapshot as bpf

    if platform.machine() != "x86_64":
        pytest.skip("the scenario calls userfaultfd by its x86-64 number")
    task_type = load_vmlinux_btf().lookup("struct task_struct")
    try:
        task_type.offsetof("blocker")
    except Exception:
        pytest.skip("this kernel has no task_struct.blocker")
    with family(MUTEX_WAIT) as fam:
        info = fam.info
        snap = bpf.take_snapshot([info["pid"]])
        by_tid = {t.pid: t for t in snap.tasks}
        waiter, holder = by_tid[info["waiter"]], by_tid[info["holder"]]
        assert waiter.state == "D" and holder.state != "D"
        f_pos_lock = load_vmlinux_btf().lookup("struct file").offsetof("f_pos_lock")
        shared = _open_file(snap, info["pid"], info["fd"])
        # A mutex: type bits 0, the address of the very file's f_pos_lock.
        assert waiter.blocker == shared.address + f_pos_lock
        assert not holder.blocker


def test_a_few_processes_are_walked_through_links_of_their_own(monkeypatch) -> None:
    """A snapshot of a few pids walks each through an iterator link that
    takes its pid (6.1+), not every task in the machine through a filter:
    both must give the same tasks, descriptors, open files and inodes."""
    require("root", "bpf")
    from kpeek.sources.bpf import loaded
    from kpeek.sources.bpf import snapshot as bpf

    with family(PIPE_FORK_DUP2) as fam:
        parent = fam.info["parent"]
        pids = [parent, *children_of(parent)]
        _wait_sleeping(pids)
        by_pid = bpf.take_snapshot(pids)
        assert loaded._per_process is True  # every kernel kpeek's tests run on takes a pid
        assert {(t.tgid, t.pid) for t in by_pid.tasks} >= {(p, p) for p in pids}
        monkeypatch.setattr(loaded, "_per_process", False)
        filtered = bpf.take_snapshot(pids)
    assert by_pid.tasks == filtered.tasks
    assert by_pid.fds == filtered.fds and len(by_pid.fds) > 3 * len(pids)
    assert by_pid.open_files == filtered.open_files and by_pid.inodes == filtered.inodes


@pytest.fixture
def private_loads(monkeypatch):
    """The BPF objects loaded afresh by this process, never kept
    (KPEEK_KEEP_BPF=0): each load holds just the programs asked for."""
    require("root", "bpf")
    from kpeek.sources.bpf import loaded

    monkeypatch.setenv("KPEEK_KEEP_BPF", "0")
    monkeypatch.setattr(loaded, "_objects", {})
    monkeypatch.setattr(loaded, "_iterators", {})
    monkeypatch.setattr(loaded, "_few", set())
    return loaded


def test_a_snapshot_without_files_loads_the_task_program_alone(private_loads) -> None:
    """Where the snapshot object is not kept for later processes (here
    KPEEK_KEEP_BPF=0), kpeek ps has libbpf load and the verifier check the
    task program alone, a snapshot of a few with files the programs it runs; a later need
    loads the object again with the programs asked for, and every load
    gives the same tasks."""
    from kpeek.sources.bpf import procfiles
    from kpeek.sources.bpf import snapshot as bpf
    from kpeek.sources.bpf.lock_layout import lock_layout

    loaded = private_loads
    with family(PIPE_FORK_DUP2) as fam:
        parent = fam.info["parent"]
        pids = [parent, *children_of(parent)]
        _wait_sleeping(pids)
        tasks_only = bpf.take_snapshot(pids, files=False)
        assert loaded._objects["snapshot"].only == {"snapshot_tasks"}
        fds = loaded._objects["snapshot"].program_fds()  # the kernel has just one
        assert fds["snapshot_tasks"] >= 0 and fds["snapshot_files"] < 0
        # and the maps only the others use are made small
        assert _max_entries(loaded._objects["snapshot"]) == {
            "seen_files": 1, "seen_mapped": 1, "wanted": 65536}
        rows, fallback = procfiles.read_process_files(pids)
        assert loaded._objects["snapshot"].only == {
            "snapshot_tasks", "snapshot_roots", "snapshot_maps"}
        again = bpf.take_snapshot(pids, files=False)
        with_files = bpf.take_snapshot(pids)  # kpeek files PID: no lock_layout
        four = {"snapshot_tasks", "snapshot_files", "snapshot_roots", "snapshot_maps"}
        assert loaded._objects["snapshot"].only == four
        assert loaded._objects["snapshot"].program_fds()["lock_layout"] < 0
        # a few processes: the per-run "seen" marks have room for a few
        few = {"seen_files": 1 << 12, "seen_mapped": 1 << 12, "wanted": 65536}
        assert _max_entries(loaded._objects["snapshot"]) == few
        lock_layout()  # the doctor's: loaded again with it
        assert loaded._objects["snapshot"].only == {*four, "lock_layout"}
        last = bpf.take_snapshot(pids, files=False)  # that object serves it
        assert loaded._objects["snapshot"].only == {*four, "lock_layout"}
        # the whole system: loaded again whole, its "seen" marks with room
        # for twice this machine's open files (a power of two, at most as built)
        before = _open_files()
        whole = bpf.take_snapshot(None)
        after = _open_files()
        assert loaded._objects["snapshot"].only is None
        sized = _max_entries(loaded._objects["snapshot"])
        for name, built in (("seen_files", 1 << 18), ("seen_mapped", 1 << 16)):
            room = sized[name]
            assert room & (room - 1) == 0 and 1 << 12 <= room <= built, sized
            fewest, most = min(before, after), max(before, after)
            assert min(built, 2 * fewest) <= room <= max(1 << 12, 4 * most), (sized, fewest)
        assert sized["wanted"] == 65536
        bpf.take_snapshot(pids)  # and that object serves a few processes too
        assert _max_entries(loaded._objects["snapshot"]) == sized
    assert tasks_only.tasks == again.tasks == with_files.tasks == last.tasks
    assert {t.tgid for t in tasks_only.tasks} == set(pids) and not tasks_only.fds
    assert {d.tgid for d in with_files.fds} == set(pids)
    assert {d.tgid for d in whole.fds} >= set(pids)
    assert not fallback and all(any(r.kind == "cwd" for r in rows[p]) for p in pids)


def _open_files() -> int:
    with open("/proc/sys/fs/file-nr") as f:
        return int(f.read().split()[0])


def _max_entries(obj) -> dict[str, int]:
    from kpeek.sources.bpf.bpfsys import MapInfo

    return {name: MapInfo(fd).max_entries for name, fd in obj.map_fds().items()
            if name in ("seen_files", "seen_mapped", "wanted")}


def test_a_process_hidden_from_the_iterators_joins_the_open_files_bpf_saw() -> None:
    """A process the iterators do not visit (pid 1 in some sandboxes) is read
    from /proc, and each of its descriptors that shares an open file with a
    process BPF saw gets that open file's BPF id (kcmp), whatever else the
    machine holds: the child here is taken as hidden."""
    from kpeek.sources.bpf import hidden
    from kpeek.sources.bpf import snapshot as bpf

    with family(PIPE_FORK_DUP2) as fam:
        info = fam.info
        parent, child = info["parent"], info["child"]
        _wait_sleeping([parent, child])
        whole = bpf.take_snapshot(None)
        seen = [d for d in whole.fds if d.tgid != child]
        merged = hidden.from_procfs([child], seen, whole.open_files, threads=False,
                                    files=True, stacks=False, all_namespaces=False)
        os.unlink(info["path"])
    got = {d.fd: d.open_file for d in merged.fds}
    bpf_id = {(d.tgid, d.fd): d.open_file for d in whole.fds}
    # inherited across fork: the parent's open files, by their BPF ids
    for fd in (info["r"], info["w"], info["shared"], info["a"], info["b"]):
        assert got[fd] == bpf_id[parent, fd], fd
    assert got[1] == bpf_id[parent, info["w"]]  # the child's dup2 of the write end
    # and its own opens (none here but what fork gave) are its own files
    assert [f for f in merged.open_files if f in bpf_id.values()] == []


def test_kpeek_files_of_a_few_processes_loads_two_programs(private_loads, capsys) -> None:
    """kpeek files PID has the verifier check the task and descriptor
    programs alone: the cwd/rtd/txt/mem rows of a few processes come from
    /proc (sources/fdfacts.py), the same rows BPF would give."""
    from kpeek.cli import main

    loaded = private_loads
    with family(PIPE_FORK_DUP2) as fam:
        parent = fam.info["parent"]
        _wait_sleeping([parent])
        assert main(["files", "--json", str(parent)]) == 0
        os.unlink(fam.info["path"])
    assert loaded._objects["snapshot"].only == {"snapshot_tasks", "snapshot_files"}
    import json

    doc = json.loads(capsys.readouterr().out)
    kinds = [r["kind"] for r in doc["processes"][0]["process_files"]]
    assert kinds[:3] == ["cwd", "rtd", "txt"] and "mem" in kinds


def test_forks_share_the_reads_of_their_cwd_root_and_exe(monkeypatch) -> None:
    """Whole-system process rows read each (mount, dentry) the kernel sent
    from /proc once: a parent and its three forks cost at most one readlink
    each of cwd, root and exe, not 12; and every row is what /proc gives."""
    from kpeek.sources.bpf import procfiles
    from kpeek.sources.fdfacts import process_files

    with family(PARENT_OF_THREE) as fam:
        pids = [fam.info["parent"], *fam.info["kids"]]
        _wait_sleeping(pids)
        links: list[bytes] = []
        readlink = os.readlink

        def counted(path, *args, **kwargs):
            links.append(path)
            return readlink(path, *args, **kwargs)

        monkeypatch.setattr(procfiles.os, "readlink", counted)
        rows, fallback = procfiles.read_process_files(None)
        monkeypatch.undo()
        for pid in pids:
            assert rows[pid] == process_files(pid), pid
    # The links: at most the first one's (none when an earlier process of
    # the same program, pytest's own, was read first), never one per process.
    mapped = [p for p in links if b"/map_files/" in p]
    links = [p for p in links if b"/map_files/" not in p]
    ours = [p for p in links if int(p.split(b"/")[2]) in set(pids)]
    assert len(ours) <= 3 + 3, ours
    assert len(links) < 3 * len(rows) - 3 * (len(pids) - 2), (len(links), len(rows))
    assert not fallback & set(pids)
    # The mapped files: the forks map their parent's very files (sent once a
    # run), and each (mount, dentry) is read once: at most one read per
    # distinct mapped file of the whole machine (a mem row, or the
    # executable, which its process's mem rows leave out).
    kids = set(fam.info["kids"])
    assert not [p for p in mapped if int(p.split(b"/")[2]) in kids], mapped
    files = {(r.path, r.inode) for own in rows.values() for r in own if r.kind in ("mem", "txt")}
    assert mapped and len(mapped) <= len(files), (len(mapped), len(files))


# A file never locked, one held with flock, one locked and unlocked with
# lockf (its inode keeps the lock context), and a pipe.
LOCKED_AND_NOT = """
import fcntl, tempfile
d = tempfile.mkdtemp(prefix="kpeek-locks-")
files = {name: open(f"{d}/{name}", "w") for name in ("plain", "flocked", "unlocked")}
fcntl.flock(files["flocked"], fcntl.LOCK_EX)
fcntl.lockf(files["unlocked"], fcntl.LOCK_EX)
fcntl.lockf(files["unlocked"], fcntl.LOCK_UN)
r, w = os.pipe()
report(pid=os.getpid(), dir=d, **{name: f.fileno() for name, f in files.items()})
"""


def test_lock_contexts_tell_which_inodes_proc_locks_may_name(monkeypatch, capsys) -> None:
    """The BPF snapshot names the inodes that ever had a lock (i_flctx): the
    flocked and the once-locked file, not the plain one; kpeek files reads
    /proc/locks (its first read in a process waits an RCU grace period) only
    when one of the inodes shown is among them, and then shows the lock."""
    import shutil
    import subprocess

    from kpeek.cli import main
    from kpeek.sources import fdfacts
    from kpeek.sources.bpf import snapshot as bpf

    with family(LOCKED_AND_NOT) as fam:
        info = fam.info
        pid = info["pid"]
        try:
            snap = bpf.take_snapshot([pid])
            inode_of = {d.fd: snap.open_files[d.open_file].inode for d in snap.fds_of(pid)}
            assert inode_of[info["flocked"]] in snap.lock_contexts
            assert inode_of[info["unlocked"]] in snap.lock_contexts
            assert inode_of[info["plain"]] not in snap.lock_contexts
            assert bpf.take_snapshot([pid], files=False).lock_contexts is None

            reads: list[int] = []
            read_locks = fdfacts.read_locks
            monkeypatch.setattr(fdfacts, "read_locks", lambda: reads.append(1) or read_locks())
            assert main(["files", "--json", "--source", "bpf", str(pid)]) == 0
            locks = [fd.get("locks") for p in json_doc(capsys)["processes"] for fd in p["fds"]]
            assert reads and [lock["kind"] for ls in locks if ls for lock in ls] == ["FLOCK"]
            reads.clear()
            sleeper = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:  # fds 0-2 on /dev/null, which nobody locks
                assert main(["files", "--json", "--source", "bpf", str(sleeper.pid)]) == 0
            finally:
                sleeper.kill()
                sleeper.wait()
            assert len(json_doc(capsys)["processes"][0]["fds"]) == 3 and not reads
            no_locks = snap.derive(lock_contexts=frozenset())
            assert fdfacts.enrich(no_locks).locks == () and not reads
        finally:
            shutil.rmtree(info["dir"], ignore_errors=True)


def json_doc(capsys) -> dict:
    import json

    return json.loads(capsys.readouterr().out)


def test_descriptor_records_cut_between_reads_decode_the_same() -> None:
    """The descriptor walk is decoded as the reads come: a record (or its
    path) cut between two chunks decodes as in one piece."""
    from kpeek.sources.bpf import snapshot as bpf
    from kpeek.sources.bpf.loaded import iterate

    with bpf.filtered([os.getpid()], threads=False, stacks=False):
        out = iterate("snapshot", "snapshot_files", [os.getpid()])
    whole = bpf._file_records([], [out])
    assert len(whole[0]) >= 3
    for step in (1, 7, bpf.FILE_REC.size - 1, bpf.FILE_REC.size + 5, 1000):
        chunks = [out[i : i + step] for i in range(0, len(out), step)]
        assert bpf._file_records([], chunks) == whole, step
