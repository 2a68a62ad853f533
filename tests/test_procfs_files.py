"""The /proc source against real process families on this kernel."""

from __future__ import annotations

import json
import os
import time

import pytest

from capabilities import require
from kpeek.cli import main
from kpeek.sources import procfs, take_snapshot
from scenarios import PIPE_FORK_DUP2, children_of, family


def _fd(snap, pid, fd):
    for d in snap.fds_of(pid):
        if d.fd == fd:
            return d
    raise AssertionError(f"fd {fd} of {pid} not in snapshot")


def test_fork_pipe_dup2_sharing():
    with family(PIPE_FORK_DUP2) as fam:
        i = fam.info
        snap = procfs.take_snapshot([i["parent"], i["child"]])
        parent, child = i["parent"], i["child"]
        # The child's stdout is the parent's pipe write end: one open file.
        assert _fd(snap, child, 1).open_file == _fd(snap, parent, i["w"]).open_file
        # Inherited descriptors share the parent's open file.
        assert _fd(snap, child, i["r"]).open_file == _fd(snap, parent, i["r"]).open_file
        assert _fd(snap, child, i["shared"]).open_file == _fd(snap, parent, i["shared"]).open_file
        # dup() shares within one process.
        assert _fd(snap, parent, i["dup"]).open_file == _fd(snap, parent, i["r"]).open_file
        # Read and write ends: two open files, one pipe inode.
        r, w = _fd(snap, parent, i["r"]), _fd(snap, parent, i["w"])
        assert r.open_file != w.open_file
        assert snap.open_files[r.open_file].inode == snap.open_files[w.open_file].inode
        assert snap.inodes[snap.open_files[r.open_file].inode].type == "pipe"
        # Two open() calls: two open files, one inode, separate offsets.
        a, b = _fd(snap, parent, i["a"]), _fd(snap, parent, i["b"])
        assert a.open_file != b.open_file
        assert snap.open_files[a.open_file].inode == snap.open_files[b.open_file].inode
        shared = snap.open_files[_fd(snap, parent, i["shared"]).open_file]
        assert shared.pos == 5 and snap.open_files[a.open_file].pos == 0
        assert len(snap.holders(shared.id)) == 2
        os.unlink(i["path"])


def test_cloexec_by_open_and_by_fcntl():
    script = """
    import fcntl
    by_open = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    by_fcntl = os.open("/dev/null", os.O_RDONLY)
    fcntl.fcntl(by_fcntl, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    plain = os.open("/dev/null", os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    os.set_inheritable(plain, True)
    report(pid=os.getpid(), by_open=by_open, by_fcntl=by_fcntl, plain=plain)
    """
    with family(script) as fam:
        i = fam.info
        snap = procfs.take_snapshot([i["pid"]])
        assert _fd(snap, i["pid"], i["by_open"]).cloexec
        assert _fd(snap, i["pid"], i["by_fcntl"]).cloexec
        plain = _fd(snap, i["pid"], i["plain"])
        assert not plain.cloexec
        flags = snap.open_files[plain.open_file].flags
        assert flags & os.O_APPEND and flags & os.O_NONBLOCK
        assert flags & os.O_ACCMODE == os.O_WRONLY
        # O_CLOEXEC lives in the fd table, never in the open file's flags.
        assert not flags & 0o2000000


def test_unlinked_socketpair_memfd_types(tmp_path):
    script = f"""
    p = {str(tmp_path / "gone")!r}
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    os.unlink(p)
    s1, s2 = socket.socketpair()
    m = os.memfd_create("kpeek-mem")
    report(pid=os.getpid(), unlinked=fd, s1=s1.fileno(), s2=s2.fileno(), memfd=m)
    """
    with family(script) as fam:
        i = fam.info
        snap = procfs.take_snapshot([i["pid"]])

        def kind(fd: int) -> tuple[str, str]:
            f = snap.open_files[_fd(snap, i["pid"], fd).open_file]
            return snap.inodes[f.inode].type, f.path

        assert kind(i["unlinked"]) == ("regular", str(tmp_path / "gone") + " (deleted)")
        assert (
            snap.inodes[snap.open_files[_fd(snap, i["pid"], i["unlinked"]).open_file].inode].nlink
            == 0
        )
        assert kind(i["s1"])[0] == kind(i["s2"])[0] == "socket"
        s1, s2 = (snap.open_files[_fd(snap, i["pid"], i[k]).open_file] for k in ("s1", "s2"))
        assert s1.inode != s2.inode
        assert kind(i["memfd"]) == ("memfd", "/memfd:kpeek-mem (deleted)")


def test_pid_namespace_inner_and_outer_pids(capsys):
    script = """
    child = os.fork()
    if child == 0:
        hold()
    report(outer=None, inner=os.getpid(), child_inner=child)
    """
    with family(script, prefix=("unshare", "--pid", "--fork", "--kill-child")) as fam:
        # unshare forks: our Popen is unshare; the namespace's init is its child.
        (inner_init,) = children_of(fam.pid)
        assert fam.info["inner"] == 1
        snap = procfs.take_snapshot([inner_init])
        t = snap.task(inner_init)
        assert t.ns_pid == 1 and t.pid == inner_init
        assert t.ns_ppid == 0  # its parent (unshare) is outside the namespace
        assert t.pidns != os.stat("/proc/self/ns/pid").st_ino
        kids = children_of(inner_init)
        snap = procfs.take_snapshot([inner_init, *kids])
        kid = snap.task(kids[0])
        assert kid.ns_pid == fam.info["child_inner"] and kid.ns_ppid == 1
        assert kid.pidns == t.pidns

        assert (
            main(
                [
                    "files",
                    "--format",
                    "cplayground",
                    "--source",
                    "procfs",
                    str(inner_init),
                    str(kids[0]),
                    str(os.getpid()),
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        blocks = [b for b in out.split("\n\n") if b.strip()]
        heads = [b.splitlines()[0].split("\t") for b in blocks]
        # Only processes outside our own PID namespace, with inner ids.
        assert sorted((int(h[1]), int(h[2]), int(h[3])) for h in heads) == sorted(
            [(inner_init, 1, 0), (kids[0], fam.info["child_inner"], 1)]
        )
        assert all(len(line.split("\t")) == 6 for b in blocks for line in b.splitlines())

        assert (
            main(["files", "--container", "--source", "procfs", str(inner_init), str(os.getpid())])
            == 0
        )
        out = capsys.readouterr().out
        assert f"PID namespace {t.pidns}: 1 processes" in out


def test_files_json_is_schema_tagged(capsys):
    with family(PIPE_FORK_DUP2) as fam:
        assert main(["files", "--json", "--source", "procfs", str(fam.info["parent"])]) == 0
        doc = json.loads(capsys.readouterr().out)
        os.unlink(fam.info["path"])
    assert doc["schema"] == "kpeek.files/1"
    (proc,) = doc["processes"]
    by_fd = {d["fd"]: d for d in proc["fds"]}
    assert by_fd[fam.info["dup"]]["open_file"] == by_fd[fam.info["r"]]["open_file"]
    assert by_fd[fam.info["dup"]]["sharers"] == 2  # r and its dup (the child is not shown)
    (shared,) = [f for f in doc["open_files"] if f["id"] == by_fd[fam.info["r"]]["open_file"]]
    assert [fam.info["parent"], fam.info["dup"]] in shared["holders"]
    assert {i["id"] for i in doc["inodes"]} >= {d["inode"] for d in proc["fds"]}
    assert by_fd[fam.info["w"]]["access"] == "O_WRONLY"


def test_snapshot_survives_exiting_tasks():
    script = """
    import subprocess
    report(pid=os.getpid()) if os.fork() else None
    while True:   # a storm of short-lived children, each with a few fds
        procs = [subprocess.Popen(["true"]) for _ in range(20)]
        for p in procs:
            p.wait()
    """
    with family(script):
        # At least 2 s of churn and at least 3 whole-system snapshots.
        deadline = time.monotonic() + 2
        vanished = 0
        rounds = 0
        while rounds < 3 or time.monotonic() < deadline:
            snap = procfs.take_snapshot(stacks=True)
            rounds += 1
            vanished += snap.vanished
            for d in snap.fds:
                f = snap.open_files[d.open_file]
                assert f.inode in snap.inodes
            assert len({t.pid for t in snap.tasks}) == len(snap.tasks)


def test_unknown_pid_is_reported_and_exits_1(capsys):
    # As lsof: the pid is told on stderr, the others (none here) shown, exit 1.
    assert main(["files", "--source", "procfs", "999999999"]) == 1
    assert capsys.readouterr().err.strip() == "kpeek: no such process: 999999999"


@pytest.mark.parametrize("argv", [["ps", "-s", "Q"], ["bt", "0"], ["files", "--source", "nope"]])
def test_bad_usage_exits_2_with_one_line(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kpeek: ") and "\n" not in err


SCM_RIGHTS_FAMILY = """
import tempfile
a, b = socket.socketpair()
child = os.fork()
if child == 0:
    a.close()
    msg, fds, _, _ = socket.recv_fds(b, 16, 1)
    b.send(str(fds[0]).encode())   # which fd number the passed file got here
    hold()
b.close()
fd = os.open(tempfile.mktemp(prefix="kpeek-scm-"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"abc")
socket.send_fds(a, [b"x"], [fd])
received = int(a.recv(16))
report(parent=os.getpid(), child=child, fd=fd, received=received)
"""


@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_fd_passed_over_scm_rights_shares_the_open_file(source):

    if source == "bpf":
        require("bpf")
    with family(SCM_RIGHTS_FAMILY) as fam:
        i = fam.info
        snap = take_snapshot(source, pids=[i["parent"], i["child"]])
        sent = _fd(snap, i["parent"], i["fd"])
        got = _fd(snap, i["child"], i["received"])
        path = snap.open_files[sent.open_file].path
        os.unlink(path)
    assert snap.source == source
    assert sent.open_file == got.open_file
    assert snap.open_files[sent.open_file].pos == 3
