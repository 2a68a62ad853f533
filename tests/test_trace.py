"""kpeek trace on the classic examples, traced on this kernel."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from kpeek.cli import main
from kpeek.render.diagram_pipes import blocking_write_ends
from kpeek.trace.changes import describe, drop_transient
from kpeek.trace.tracer import Step, run_trace

# The missing close: the child makes the pipe's read end its stdin and execs
# sort, but keeps the write end, so sort never sees end-of-file. The parent
# gives up after a while and kills it.
MISSING_CLOSE = """
import os, signal, time
r, w = os.pipe2(0)                  # like C's pipe(): not close-on-exec
child = os.fork()
if child == 0:
    os.dup2(r, 0)
    os.close(r)
    os.execvp("sort", ["sort"])
os.close(r)
os.write(w, b"pear\\napple\\n")
os.close(w)
time.sleep(0.5)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
"""


def slot(step: Step, tgid: int, fd: int):
    """(open file, inode) of one descriptor in a step's snapshot, or None."""
    snap = step.snapshot
    for d in snap.fds_of(tgid):
        if d.fd == fd:
            f = snap.open_files[d.open_file]
            return f, snap.inodes.get(f.inode)
    return None


def first(steps: list[Step], predicate) -> Step:
    return next(s for s in steps if predicate(s))


@pytest.mark.timeout(60)
def test_pipe_to_sort_with_missing_close():
    trace = run_trace([sys.executable, "-S", "-c", MISSING_CLOSE], timeout=30)
    steps, _ = drop_transient(trace.steps)
    assert trace.stopped is None and trace.exit_status == 0
    parent = trace.steps[0].tgid
    pipe = first(steps, lambda s: s.syscall == "pipe2" and s.tgid == parent)
    r, w = json.loads(pipe.args[0])
    fork = first(steps, lambda s: s.syscall in ("clone", "fork", "clone3") and s.tgid == parent)
    child = fork.result
    assert fork.index > pipe.index and child in {t.tgid for t in fork.snapshot.processes()}
    # after fork the child holds both ends, sharing the parent's open files
    for fd in (r, w):
        assert slot(fork, child, fd)[0].id == slot(fork, parent, fd)[0].id
    dup = first(steps, lambda s: s.syscall in ("dup2", "dup3") and s.tgid == child)
    assert dup.args[:2] == (str(r), "0")
    exec_sort = first(steps, lambda s: s.syscall == "execve" and s.tgid == child)
    assert exec_sort.comm == "sort" and '"sort"' in exec_sort.call
    # sort now reads the pipe on fd 0 and still holds its write end: flagged
    _, inode0 = slot(exec_sort, child, 0)
    fw, inodew = slot(exec_sort, child, w)
    assert inode0.type == "pipe" and inode0.id == inodew.id
    assert fw.flags & os.O_ACCMODE == os.O_WRONLY
    blocking = [(b.fd.tgid, b.fd.fd, b.self_held) for b in blocking_write_ends(exec_sort.snapshot)]
    assert (child, w, True) in blocking
    sort_exit = first(steps, lambda s: s.syscall == "exit" and s.tgid == child)
    assert sort_exit.args == ("137",)  # killed by SIGKILL, never saw end-of-file
    assert child not in {t.tgid for t in sort_exit.snapshot.processes()}
    # just before: the parent has closed its write end, sort's own copy remains
    before = steps[steps.index(sort_exit) - 1]
    assert slot(before, parent, w) is None and slot(before, child, w) is not None
    assert [(b.fd.tgid, b.fd.fd) for b in blocking_write_ends(before.snapshot)] == [(child, w)]
    views = describe(steps)
    text = "\n".join(views[steps.index(sort_exit)].changes)
    assert f"process {child} (sort) is gone" in text
    warnings = [c for v in views for c in v.changes if "keeps itself" in c]
    assert len(warnings) == 1 and f"fd {w}, the write end of pipe:[" in warnings[0]


@pytest.mark.timeout(60)
def test_redirect_stdout_and_stderr_to_a_file_with_dup2(tmp_path, capsys):
    out = tmp_path / "out.txt"
    script = f'ls /nonexistent-kpeek-dir > "{out}" 2>&1; echo done'
    assert main(["trace", "--json", "--", "sh", "-c", script]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "kpeek.trace/1" and doc["exit_status"] == 0
    steps = doc["steps"]
    opened = first_json(
        steps, lambda s: s["syscall"] in ("open", "openat") and str(out) in s["call"]
    )
    fd = opened["result"]
    shell = opened["tgid"]  # the shell redirects, then forks ls
    onto_stdout = first_json(steps, lambda s: s["tgid"] == shell
                             and s["syscall"] in ("dup2", "dup3")
                             and s["args"][:2] == [str(fd), "1"])
    onto_stderr = first_json(steps, lambda s: s["tgid"] == shell and s["syscall"] == "dup2"
                             and s["args"] == ["1", "2"])
    assert opened["index"] < onto_stdout["index"] < onto_stderr["index"]
    ls_exec = first_json(steps, lambda s: s["syscall"] == "execve" and s["comm"] == "ls")
    proc = next(p for p in ls_exec["processes"] if p["pid"] == ls_exec["tgid"])
    table = {d["fd"]: d["file"] for d in proc["fds"]}
    assert table[1] == table[2]  # one open file: 2>&1 shares the offset
    files = {f["file"]: f for f in ls_exec["open_files"]}
    assert files[table[1]]["path"] == str(out) and files[table[1]]["holders"] >= 2
    assert "No such file" in out.read_text()  # ls really wrote its error there
    changes = "\n".join(onto_stderr["changes"])
    assert f"fd 2 -> {table[1]} {out}" in changes.replace("fd 2 now ->", "fd 2 ->")


def first_json(steps, predicate):
    return next(s for s in steps if predicate(s))


@pytest.mark.timeout(60)
def test_fork_after_open_shares_the_offset(tmp_path):
    path = tmp_path / "shared.txt"
    trace = run_trace(["sh", "-c", f'exec 3>"{path}"; (echo hello >&3); echo world >&3'],
                      timeout=30)
    steps, _ = drop_transient(trace.steps)
    views = describe(steps)
    shell = steps[0].tgid
    fork = first(steps, lambda s: s.syscall in ("clone", "fork", "vfork", "clone3"))
    child = fork.result
    f_parent, _ = slot(fork, shell, 3)
    f_child, _ = slot(fork, child, 3)
    assert f_parent.id == f_child.id and f_parent.pos == 0
    label = views[steps.index(fork)].labels[f_parent.id]
    child_exit = first(steps, lambda s: s.syscall == "exit" and s.tgid == child)
    # the child's write moved the offset the parent sees
    f_after, _ = slot(child_exit, shell, 3)
    assert f_after.pos == len("hello\n")
    view = views[steps.index(child_exit)]
    assert view.labels[f_after.id] == label
    assert any(c == f"open file {label}: offset 0 -> 6" for c in
               "\n".join(v for vw in views[steps.index(fork):steps.index(child_exit) + 1]
                         for v in vw.changes).splitlines())
    assert path.read_text() == "hello\nworld\n"


@pytest.mark.timeout(60)
def test_timeout_kills_and_reaps_every_tracee():
    trace = run_trace(["sh", "-c", "sleep 30 & sleep 30; wait"], timeout=1.5)
    assert trace.stopped == "timeout"
    pids = {t.tgid for s in trace.steps for t in s.snapshot.processes()}
    assert len(pids) >= 2
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), f"tracee {pid} still alive ({state})"


def test_command_not_found_is_a_usage_error(capsys):
    assert main(["trace", "--", "kpeek-no-such-command"]) == 2
    assert "command not found" in capsys.readouterr().err
    assert main(["trace"]) == 2


def test_hidden_loader_steps_are_counted(capsys):
    assert main(["trace", "--", "true"]) == 0
    out = capsys.readouterr().out
    assert "execve(" in out and "hidden" in out
    assert main(["trace", "--all-opens", "--", "true"]) == 0
    assert "ld.so.cache" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_ctrl_c_kills_and_reaps_the_traced_program(tmp_path):
    import signal
    import subprocess
    import time

    marker = tmp_path / "pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpeek", "trace", "--", "sh", "-c",
         f'echo $$ > "{marker}"; exec sleep 30'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (marker.exists() and marker.read_text().strip()):
            assert time.monotonic() < deadline, "the traced shell never started"
            time.sleep(0.05)
        shell = int(marker.read_text())
        time.sleep(0.3)  # let it exec sleep
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stat = Path(f"/proc/{shell}/stat")  # the shell that became sleep: killed and reaped
    assert not stat.exists() or stat.read_text().rsplit(") ", 1)[1][0] in ("Z", "X")


def test_program_that_cannot_exec_is_a_usage_error(tmp_path, capfd):
    bad = tmp_path / "not-a-program"
    bad.write_bytes(b"\x7fELF garbage")
    bad.chmod(0o755)
    assert main(["trace", "--", str(bad)]) == 2
    err = capfd.readouterr().err
    assert "Exec format error" in err and "cannot run" in err


def test_first_step_holds_only_what_the_program_inherits():
    ours_before = {int(fd) for fd in os.listdir("/proc/self/fd")}
    trace = run_trace(["true"])
    leader = trace.steps[0].tgid
    start = {d.fd for d in trace.steps[0].snapshot.fds_of(leader)}
    assert start <= ours_before  # kpeek's own exec-error pipe is closed by then
    assert trace.steps[1].syscall == "execve"
    assert not any(d.cloexec for d in trace.steps[1].snapshot.fds_of(leader))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status", [0, 1, 7])
def test_exits_with_the_traced_programs_status(status, capsys):
    """`kpeek trace -- false` fails as false does: scripts can trace in place."""
    assert main(["trace", "--", "sh", "-c", f"exit {status}"]) == status
    assert f"exit status {status}" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_a_tiny_timeout_is_kept_and_exits_124():
    """--timeout 0.001 stops the program (it used to fire inside fork and be lost)."""
    import subprocess
    import time

    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kpeek", "trace", "--timeout", "0.001", "--",
                        "sleep", "20"], capture_output=True, text=True, timeout=50)
    assert time.monotonic() - start < 15
    assert p.returncode == 124, p
    assert "(timeout)" in p.stdout and "Traceback" not in p.stderr


@pytest.mark.timeout(60)
def test_json_stdout_is_only_json_while_the_program_prints():
    """The traced program's own stdout goes to stderr under --json."""
    import subprocess

    p = subprocess.run([sys.executable, "-m", "kpeek", "trace", "--json", "--", "sh", "-c",
                        "echo from-the-program; echo to-stderr >&2"],
                       capture_output=True, text=True, timeout=50)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # one document, nothing else
    assert doc["exit_status"] == 0
    assert "from-the-program" in p.stderr and "to-stderr" in p.stderr
    assert [s["index"] for s in doc["steps"]][:2] == [0, 1]  # numbered as text and HTML


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "1e-300", "0", "-1", "x"])
def test_timeout_that_is_not_a_number_of_seconds(value, capsys):
    assert main(["trace", "--timeout", value, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--timeout" in err
