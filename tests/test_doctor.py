"""kpeek doctor on real kernel states: file-lock deadlocks, EDEADLK refusals,
pipes that never end, FUSE lock chains and FUSE deadlocks, and a healthy
system. Every stuck state is undone in teardown, even on failure."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time

import pytest

from capabilities import require
from fuse_scenarios import ByPid, fuse_mount, in_fuse_write, state, wait_for, wchan
from kpeek import jsonout
from kpeek.cli import main
from kpeek.diagnose.findings import diagnose
from kpeek.diagnose.story import all_text, to_json
from kpeek.sources.procfs import take_snapshot

PY = sys.executable
LOCK_WAIT = ("locks_lock_inode_wait", "flock", "fcntl_setlk", "posix_lock_inode_wait")


def spawn(procs: list, code: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, **kw)
    procs.append(p)
    return p


def doctor(*pids: int, min_sleep: float = 1.0, snapshot=None, kernel_memory: bool = True):
    snapshot = snapshot or take_snapshot(stacks=True)
    diag = diagnose(snapshot, min_sleep=min_sleep, kernel_log=False, kernel_memory=kernel_memory)
    return diag.restricted_to(set(pids)) if pids else diag


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["doctor", *argv])
    return code, capsys.readouterr().out


# A process that takes lock one, says so, waits for "go", then takes lock two.
TWO_LOCKS = """
import fcntl, os, struct, sys
kind, first, second = sys.argv[1:4]
if len(sys.argv) > 4:  # a hostile name: terminal escapes and quotes
    with open("/proc/self/comm", "wb") as f:
        f.write(sys.argv[4].encode("utf-8", "surrogateescape"))
def take(path):
    f = open(path, "r+")
    try:
        if kind == "flock":
            fcntl.flock(f, fcntl.LOCK_EX)
        elif kind == "ofd":  # F_OFD_SETLKW on the whole file
            fcntl.fcntl(f, 38, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        else:
            fcntl.lockf(f, fcntl.LOCK_EX)
    except OSError as e:
        print("refused", e.errno, flush=True)
        return f
    print("locked", path, flush=True)
    return f
a = take(first)
sys.stdin.readline()
b = take(second)
sys.stdin.readline()
"""


HOSTILE = '\x1b[2J"a}\\'


def lockers(procs, tmp_path, kind, name=()):
    paths = [tmp_path / "alpha.lock", tmp_path / "beta.lock"]
    for p in paths:
        p.write_text("x")
    one = subprocess.Popen([PY, "-c", TWO_LOCKS, kind, str(paths[0]), str(paths[1]), *name],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    two = subprocess.Popen([PY, "-c", TWO_LOCKS, kind, str(paths[1]), str(paths[0])],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs += [one, two]
    assert one.stdout.readline().startswith("locked")
    assert two.stdout.readline().startswith("locked")
    return paths, one, two


@pytest.mark.timeout(60)
def test_flock_abba_is_a_deadlock(procs, tmp_path, capsys):
    require("root")
    paths, one, two = lockers(procs, tmp_path, "flock", name=[HOSTILE])
    for p in (one, two):
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in (one, two):
        wait_for(lambda p=p: wchan(p.pid).startswith(LOCK_WAIT), 10, "the flock wait")

    diag = doctor(one.pid, two.pid)
    assert len(diag.deadlocks) == 1
    deadlock = diag.deadlocks[0]
    assert {diag.tgid_of(n) for n in deadlock.nodes} == {one.pid, two.pid}
    story = "\n".join(all_text(diag)[0])
    for needle in (str(paths[0]), str(paths[1]), f"pid {one.pid}", f"pid {two.pid}", "FLOCK"):
        assert needle in story
    assert {e.kind for c in deadlock.cycles for e in c} - {"thread"} == {"flock"}

    doc = json.loads(jsonout.dumps("doctor", to_json(diag)))
    assert doc["schema"].startswith("kpeek.doctor/")
    assert len(doc["deadlocks"]) == 1
    assert f"task:{one.pid}" in {n["id"] for n in doc["graph"]["nodes"]}

    dot = tmp_path / "waits.dot"
    code, out = run_cli(capsys, "--dot", str(dot), str(one.pid), str(two.pid))
    assert code == 1 and "\x1b" not in out and "\\x1b[2J" in out
    text = dot.read_text()
    assert text.startswith("digraph") and f"task:{one.pid}" in text and "color=red" in text
    assert "\x1b" not in text and '\\x1b[2J\\"a}' in text  # escaped, quote included
    if subprocess.run(["which", "dot"], capture_output=True).returncode == 0:
        subprocess.run(["dot", "-Tsvg", str(dot), "-o", str(tmp_path / "w.svg")], check=True)


@pytest.mark.timeout(60)
def test_ofd_abba_is_a_deadlock_though_proc_locks_shows_no_pids(procs, tmp_path):
    require("root")
    paths, one, two = lockers(procs, tmp_path, "ofd")
    for p in (one, two):
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in (one, two):
        wait_for(lambda p=p: wchan(p.pid).startswith(LOCK_WAIT), 10, "the OFD lock wait")
    diag = doctor(one.pid, two.pid)
    assert len(diag.deadlocks) == 1, all_text(diag)
    d = diag.deadlocks[0]
    assert {diag.tgid_of(n) for n in d.nodes} == {one.pid, two.pid}
    edges = [e for c in d.cycles for e in c if e.kind != "thread"]
    assert {e.kind for e in edges} == {"ofd"}
    assert {e.path for e in edges} == {str(paths[0]), str(paths[1])}
    assert all(e.detail == "held through fd 3" for e in edges)


HOLD_THEN_READ = """
import fcntl, sys
f = open(sys.argv[1], "r+")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()           # waits for the other process, which holds the write end
"""
TAKE = "import fcntl, sys; fcntl.flock(open(sys.argv[1], 'r+'), fcntl.LOCK_EX)"


@pytest.mark.timeout(60)
def test_cycle_through_a_pipe_and_a_flock_is_a_deadlock(procs, tmp_path):
    require("root")
    path = tmp_path / "mixed.lock"
    path.write_text("x")
    r, w = os.pipe()
    try:
        reader = subprocess.Popen([PY, "-c", HOLD_THEN_READ, str(path)], stdin=r,
                                  stdout=subprocess.PIPE, text=True)
        procs.append(reader)
        assert reader.stdout.readline().startswith("locked")
        locker = subprocess.Popen([PY, "-c", TAKE, str(path)], pass_fds=[w])
        procs.append(locker)
    finally:
        os.close(r)
        os.close(w)
    wait_for(lambda: "pipe_read" in wchan(reader.pid), 10, "the reader")
    wait_for(lambda: wchan(locker.pid).startswith(LOCK_WAIT), 10, "the locker")
    diag = doctor(reader.pid, locker.pid)
    assert len(diag.deadlocks) == 1, all_text(diag)
    kinds = {e.kind for c in diag.deadlocks[0].cycles for e in c} - {"thread"}
    assert kinds == {"pipe", "flock"}
    assert diag.pipes == []  # told once, as the deadlock


@pytest.mark.timeout(60)
def test_posix_abba_refused_with_edeadlk_is_no_deadlock(procs, tmp_path, capsys):
    require("root")
    paths, one, two = lockers(procs, tmp_path, "posix")
    one.stdin.write("go\n")
    one.stdin.flush()
    wait_for(lambda: wchan(one.pid).startswith(LOCK_WAIT), 10, "the POSIX lock wait")
    two.stdin.write("go\n")
    two.stdin.flush()
    answer = two.stdout.readline().split()
    assert answer[:2] == ["refused", str(35)]  # EDEADLK: the kernel saw the cycle coming

    diag = doctor(one.pid, two.pid)
    assert diag.deadlocks == [] and diag.hung == [] and diag.pipes == []
    # The wait itself is seen: one waits for two's lock on beta.
    waits = [e for e in diag.graph.edges if e.waiter == f"task:{one.pid}"]
    assert [(e.kind, e.holder, e.path) for e in waits] == [
        ("posix", f"proc:{two.pid}", str(paths[1]))]
    code, out = run_cli(capsys, str(one.pid), str(two.pid))
    assert code == 0 and "No problems found" in out


MISSING_CLOSE = """
import os, sys
r, w = os.pipe()
os.set_inheritable(w, True)   # as pipe(2) in C: no close-on-exec
child = os.fork()
if child == 0:
    os.dup2(r, 0)
    os.close(r)
    os.execvp("sort", ["sort"])   # bug: w is still open in the child
os.close(r)
print(child, w, flush=True)
os.write(w, b"pear\\napple\\nfig\\n")
os.close(w)
os.waitpid(child, 0)
"""


@pytest.mark.timeout(60)
def test_missing_close_names_the_childs_fd(procs, capsys):
    require("root")
    parent = spawn(procs, MISSING_CLOSE)
    sort_pid, write_fd = map(int, parent.stdout.readline().split())
    procs.append(ByPid(sort_pid))
    wait_for(lambda: "pipe_read" in wchan(sort_pid), 10, "sort to block in pipe_read")

    diag = doctor(parent.pid, sort_pid)
    assert len(diag.pipes) == 1
    finding = diag.pipes[0]
    assert finding.wait.reader.pid == sort_pid and finding.wait.read_fd == 0
    assert [(c.tgid, c.fds, c.relation) for c in finding.culprits] == [
        (sort_pid, (write_fd,), "the reader itself holds it")]
    # The parent waits for sort forever; its chain ends at the pipe finding.
    parent_hung = [h for h in diag.hung if h.task.pid == parent.pid]
    assert parent_hung and "never reaches end-of-file" in parent_hung[0].root
    code, out = run_cli(capsys, str(parent.pid))
    assert code == 1
    assert f"sort (pid {sort_pid}) fd {write_fd} -- the reader itself holds it" in out


PARENT_FORGETS = """
import os
r, w = os.pipe()            # close-on-exec: sort gets no copy of w
child = os.fork()
if child == 0:
    os.dup2(r, 0)
    os.execvp("sort", ["sort"])
os.close(r)
print(child, w, flush=True)
os.write(w, b"pear\\napple\\n")
os.waitpid(child, 0)        # bug: w is still open here, so sort never sees EOF
"""


@pytest.mark.timeout(60)
def test_parent_waiting_with_the_write_end_open_is_named(procs):
    require("root")
    parent = spawn(procs, PARENT_FORGETS)
    sort_pid, write_fd = map(int, parent.stdout.readline().split())
    procs.append(ByPid(sort_pid))
    wait_for(lambda: "pipe_read" in wchan(sort_pid), 10, "sort to block in pipe_read")
    wait_for(lambda: wchan(parent.pid) == "do_wait", 10, "the parent to wait")
    diag = doctor(parent.pid)
    assert diag.deadlocks == []
    [finding] = diag.pipes
    assert [(c.tgid, c.fds, c.relation) for c in finding.culprits] == [
        (parent.pid, (write_fd,), "the reader's parent (or ancestor) still holds it")]


WRITE = "f = open({path!r}, 'w'); f.write('x'); f.flush()"


@pytest.mark.timeout(90)
def test_fuse_writer_holds_i_rwsem_and_truncate_hangs(capsys):
    require("root", "fuse", "bpf")
    with fuse_mount("block") as m:
        a = m.spawn(WRITE.format(path=m.path("a")))
        wait_for(lambda: in_fuse_write(a.pid), 15, "A in FUSE write",
                 about=[a])
        spawned = time.monotonic()
        b = m.spawn(f"import os; os.truncate({m.path('a')!r}, 0)")
        # D in the inode lock, not in a lookup the server has yet to answer
        wait_for(lambda: state(b.pid) == "D" and not wchan(b.pid).startswith(
            "request_wait_answer"), 15, "B in D state on the inode lock", about=[a, b])
        seen = time.monotonic()
        time.sleep(0.3)

        snapshot = take_snapshot(stacks=True)
        before = time.monotonic()
        diag = doctor(b.pid, min_sleep=0.2, snapshot=snapshot)
        after = time.monotonic()
        hung = [h for h in diag.hung if h.task.pid == b.pid]
        assert len(hung) == 1, all_text(diag)
        h = hung[0]
        # B went to sleep after it was spawned and before it was seen asleep; the
        # time is read during doctor(). 0.25 s for the per-CPU clock calibration.
        assert h.asleep is not None
        assert before - seen - 0.25 <= h.asleep <= after - spawned + 0.25, (
            h.asleep, before - seen, after - spawned)
        first, second = h.chain[0], h.chain[1]
        assert first.kind == "rwsem"
        assert first.resource == f"the i_rwsem of {m.path('a')}"
        assert first.holder == f"task:{a.pid}"
        assert second.kind == "fuse" and second.holder == f"proc:{m.server.pid}"
        story = "\n".join(all_text(diag)[0])
        assert f"waits for the i_rwsem of {m.path('a')}, held by {comm(a.pid)} (pid {a.pid})" \
            in story
        assert f"served by {comm(m.server.pid)} (pid {m.server.pid})" in story
        code, _ = run_cli(capsys, "--min-sleep", "0.2", str(b.pid))
        assert code == 1

        # Without kernel memory the lock is unseen, and doctor says so.
        blind = doctor(b.pid, min_sleep=0.2, snapshot=snapshot, kernel_memory=False)
        [h] = [h for h in blind.hung if h.task.pid == b.pid]
        assert h.chain == () and "not visible without kernel memory" in h.root
        assert any("kernel memory" in n for n in blind.notes)


@pytest.mark.timeout(90)
def test_fuse_servers_writing_into_each_other_is_a_deadlock():
    require("root", "fuse", "bpf")
    with fuse_mount("cross") as m:
        a = m.spawn(WRITE.format(path=m.path("a")))
        b = m.spawn(WRITE.format(path=m.path("b")))

        def server_threads_in_d() -> int:
            tids = os.listdir(f"/proc/{m.server.pid}/task")
            return sum(state_of_thread(m.server.pid, int(t)) == "D" for t in tids)

        wait_for(lambda: server_threads_in_d() == 2, 15, "both server threads in D")
        diag = doctor(a.pid, b.pid, m.server.pid)
        assert len(diag.deadlocks) == 1, all_text(diag)
        d = diag.deadlocks[0]
        assert {a.pid, b.pid, m.server.pid} <= {diag.tgid_of(n) for n in d.nodes}
        kinds = {e.kind for c in d.cycles for e in c}
        assert {"rwsem", "fuse"} <= kinds
        resources = {e.resource for c in d.cycles for e in c if e.kind == "rwsem"}
        assert resources == {f"the i_rwsem of {m.path('a')}", f"the i_rwsem of {m.path('b')}"}


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def state_of_thread(tgid: int, tid: int) -> str:
    with open(f"/proc/{tgid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


SLOW_WRITER = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.close(w)
    os.read(r, 1)        # the reader: blocked until the writer writes
    os._exit(0)
os.close(r)
print(os.getpid(), flush=True)
time.sleep(300)          # the writer: slow, but alive and free to write
"""


FIFO_DAEMON = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)   # keeps the FIFO open: waits for writers to come
os.read(fd, 1)
"""


@pytest.mark.timeout(60)
def test_healthy_system_has_no_findings(procs, capsys, tmp_path):
    require("root")
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    # The kernel reports already in this boot's log are facts, not findings
    # of this test's: only one logged while it runs would be.
    logged_before = whole_machine(capsys)["kernel_reports"] if ci else []
    slow = spawn(procs, SLOW_WRITER)
    assert int(slow.stdout.readline()) == slow.pid
    fifo = tmp_path / "commands"
    os.mkfifo(fifo)
    daemon = subprocess.Popen([PY, "-c", FIFO_DAEMON, str(fifo)])
    procs.append(daemon)
    primary, secondary = pty.openpty()
    tty_reader = subprocess.Popen(["cat"], stdin=secondary, stdout=subprocess.DEVNULL)
    procs.append(tty_reader)
    os.close(secondary)
    try:
        reader = wait_child(slow.pid)
        wait_for(lambda: "pipe_read" in wchan(reader), 10, "the slow pipe's reader")
        wait_for(lambda: wchan(tty_reader.pid).startswith(("n_tty_read", "wait_woken")), 10,
                 "cat reading the terminal")
        wait_for(lambda: "pipe_read" in wchan(daemon.pid), 10, "the FIFO daemon")
        full = doctor()
        mine = {slow.pid, reader, tty_reader.pid, daemon.pid}
        diag = full.restricted_to(mine)
        assert not diag.found_problems, all_text(diag)
        # Seen and judged: the reader waits for a writer that is free to write.
        assert any(e.waiter == f"task:{reader}" and e.holder == f"proc:{slow.pid}"
                   for e in full.graph.edges)
        assert f"task:{reader}" not in full.stuck
        # No idle kernel thread is ever a finding.
        kthreads = {t.pid for t in full.graph.snapshot.tasks if t.ppid == 2 or t.pid == 2}
        assert not any(h.task.pid in kthreads and h.task.state != "D" for h in full.hung)
        code, out = run_cli(capsys, *map(str, sorted(mine)))
        assert code == 0 and "No problems found" in out
        if ci:  # a CI machine has nothing stuck: no false finding anywhere on it
            found = whole_machine(capsys)
            assert not (found["deadlocks"] or found["hung"] or found["pipes"]), found
            assert [r for r in found["kernel_reports"] if r not in logged_before] == []
    finally:
        os.close(primary)


def whole_machine(capsys) -> dict:
    """kpeek doctor --json over the whole machine."""
    capsys.readouterr()
    main(["doctor", "--json"])
    return json.loads(capsys.readouterr().out)


def wait_child(ppid: int) -> int:
    found: list[int] = []

    def child() -> bool:
        with open(f"/proc/{ppid}/task/{ppid}/children") as f:
            found[:] = [int(x) for x in f.read().split()]
        return bool(found)

    wait_for(child, 10, "the child")
    return found[0]


@pytest.mark.timeout(60)
def test_doctor_does_not_hang_on_a_blocked_single_threaded_fuse_server():
    # A stat() of a file on this mount would wait for the blocked server forever.
    require("root", "fuse")
    with fuse_mount("block", single_thread=True) as m:
        a = m.spawn(WRITE.format(path=m.path("a")) + "; import time; time.sleep(60)")
        wait_for(lambda: in_fuse_write(a.pid), 15, "A in FUSE write")
        time.sleep(1.2)  # past the attribute timeout: a stat would ask the server
        try:
            done = subprocess.run([PY, "-m", "kpeek", "doctor", "--json", str(a.pid)],
                                  capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("kpeek doctor hung on the blocked FUSE server")
        # A waits for a server that waits on a pipe the test may still write:
        # seen, and rightly not a finding.
        doc = json.loads(done.stdout)
        assert done.returncode == 0 and not doc["problems"]
        assert {(e["waiter"], e["holder"], e["kind"]) for e in doc["graph"]["edges"]} >= {
            (f"task:{a.pid}", f"proc:{m.server.pid}", "fuse")}


@pytest.mark.timeout(60)
def test_chain_ends_at_a_stopped_fuse_server():
    require("root", "fuse", "bpf")
    with fuse_mount("block") as m:
        a = m.spawn(WRITE.format(path=m.path("a")))
        wait_for(lambda: in_fuse_write(a.pid), 15, "A in FUSE write",
                 about=[a])
        b = m.spawn(f"import os; os.truncate({m.path('a')!r}, 0)")
        # D in the inode lock, not in a lookup the server has yet to answer
        wait_for(lambda: state(b.pid) == "D" and not wchan(b.pid).startswith(
            "request_wait_answer"), 15, "B in D state on the inode lock", about=[a, b])
        os.kill(m.server.pid, signal.SIGSTOP)  # teardown's SIGKILL ends it even stopped
        wait_for(lambda: state(m.server.pid) == "T", 10, "the server to stop")
        diag = doctor(b.pid, min_sleep=0)
        [h] = [h for h in diag.hung if h.task.pid == b.pid]
        assert [e.kind for e in h.chain] == ["rwsem", "fuse"]
        assert h.root == f"{comm(m.server.pid)} (pid {m.server.pid}), stopped by a signal " \
                         "(SIGSTOP, SIGTSTP...)"
        assert h.fix == f"kill -CONT {m.server.pid}"
