"""ps, files and doctor on the lab's dumps of a Debian 6.1 guest, walked in memory.

The truth is the guest's own: /proc as it was recorded just before the
dumps, and the descriptors its scenario commands were started with
(``sleep < /dev/kpeek_pin``, ``cat /tmp/kpeek-pipe``, ``sleep > /tmp/kpeek-pipe``).
The ELF and the kdump-compressed dump hold the same memory: they must give
the same answers.
"""

from __future__ import annotations

import json
import re

import pytest

from kpeek.cli import main
from lab.fixtures import LabDumps

pytestmark = pytest.mark.timeout(300)


def _run(capsys, *argv: str) -> dict:
    code = main(list(argv))
    doc = json.loads(capsys.readouterr().out)
    return {"code": code, **doc}


@pytest.fixture(params=["elf", "kdump"])
def dump(request, lab_dumps: LabDumps) -> str:
    return str(getattr(lab_dumps, request.param))


def test_ps_on_a_dump_is_the_guests_own(capsys, lab_dumps: LabDumps, dump: str) -> None:
    truth = lab_dumps.truth
    doc = _run(capsys, "-c", dump, "ps", "--json", "-t")
    assert doc["code"] == 0 and doc["source"] == "memory" and doc["notes"] == []
    tasks = {t["pid"]: t for t in doc["tasks"]}
    # Every task the guest listed; any other started after that listing (a
    # later command of the lab's shell), so it has a higher pid.
    assert set(truth.tasks) <= set(tasks)
    assert all(pid > max(truth.tasks) for pid in set(tasks) - set(truth.tasks))
    for pid, want in truth.tasks.items():
        got = tasks[pid]
        assert got["ppid"] == want.ppid, pid
        # A worker's "-desc" and a busy kthread's state may change between the
        # guest's /proc read and the dump; every user process is asleep.
        if not want.comm.startswith("kworker/"):
            assert got["comm"] == want.comm, pid
        if pid in truth.pids.values() or want.state == "D":
            assert got["state"] == want.state, (pid, got, want)
    reader = tasks[truth.pids["pipe_reader"]]
    assert reader["wchan"] == "pipe_read" and reader["kernel_stack"] is None
    a = tasks[truth.scenario["kpeek_abba.task_a_pid"]]
    assert a["state"] == "D" and a["comm"] == "kpeek_abba_a" and a["ns"]["pid"] == a["pid"]


def test_files_on_a_dump_are_the_descriptors_the_guest_made(capsys, lab_dumps: LabDumps,
                                                             dump: str) -> None:
    pids = lab_dumps.truth.pids
    doc = _run(capsys, "-c", dump, "files", "--json", *map(str, pids.values()))
    assert doc["code"] == 0 and doc["source"] == "memory" and doc["notes"] == []
    fds = {(p["pid"], d["fd"]): d for p in doc["processes"] for d in p["fds"]}
    files = {f["id"]: f for f in doc["open_files"]}
    assert fds[(pids["pin_holder"], 0)]["path"] == "/dev/kpeek_pin"
    assert fds[(pids["pin_holder"], 0)]["type"] == "chardev"
    assert fds[(pids["sleeper"], 0)]["path"] == "/dev/null"
    read_end = fds[(pids["pipe_reader"], 3)]
    write_end = fds[(pids["pipe_writer"], 1)]
    for end, access in ((read_end, "O_RDONLY"), (write_end, "O_WRONLY")):
        assert (end["path"], end["type"], end["access"]) == ("/tmp/kpeek-pipe", "fifo", access)
    # One FIFO inode, two open()s: two open files, one reference each.
    assert read_end["inode"] == write_end["inode"]
    assert read_end["open_file"] != write_end["open_file"]
    assert files[read_end["open_file"]]["refcount"] == 1
    # The guest's shell gave every background job its console on fd 2.
    consoles = {fds[(pid, 2)]["inode"] for pid in pids.values()}
    assert len(consoles) == 1 and fds[(pids["sleeper"], 2)]["path"] == "/dev/console"
    assert all(not d["cloexec"] for d in fds.values())


def test_doctor_on_a_dump_finds_the_abba_deadlock(capsys, lab_dumps: LabDumps,
                                                  dump: str) -> None:
    truth = lab_dumps.truth
    a = truth.scenario["kpeek_abba.task_a_pid"]
    b = truth.scenario["kpeek_abba.task_b_pid"]
    doc = _run(capsys, "-c", dump, "doctor", "--json")
    assert doc["code"] == 1
    (deadlock,) = doc["deadlocks"]
    assert set(deadlock["nodes"]) == {f"task:{a}", f"task:{b}"}
    edges = [e for c in deadlock["cycles"] for e in c]
    assert {(e["waiter"], e["holder"], e["kind"]) for e in edges} == {
        (f"task:{a}", f"task:{b}", "mutex"), (f"task:{b}", f"task:{a}", "mutex")}
    # How long they slept, by the dump's own clock: since before the guest's
    # hung-task report (2 s and more), and no longer than the guest was up.
    story = json.dumps(deadlock["story"])
    slept = [float(x) for x in re.findall(r"asleep ([0-9.]+) s", story)]
    assert len(slept) == 2 and all(2 < s < truth.uptime + 60 for s in slept), story
    # The dump's own kernel log: the guest's hung-task reports, not this host's.
    titles = [r["title"] for r in doc["kernel_reports"]]
    assert "INFO: task hung in kpeek_take_a_then_b" in titles, titles
