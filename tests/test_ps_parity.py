"""kpeek ps against ps(1) on real processes: USER, %CPU, %MEM, RSS, VSZ,
START, TIME and the command line; -o, --sort, --forest, -u, -p lists;
the task_struct address hashed, raw, and stable between runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from capabilities import require
from kpeek.cli import main
from scenarios import PARENT_OF_THREE, family

# kpeek in a fresh process (a fresh per-run key each time)
KPEEK = [sys.executable, "-m", "kpeek"]

# A busy child (CPU time to show) and a sleeping one with 40 MiB touched.
WORKERS = """
import mmap
busy = os.fork()
if busy == 0:
    end = time.time() + 1.5
    while time.time() < end:
        pass
    hold()
fat = os.fork()
if fat == 0:
    m = mmap.mmap(-1, 40 << 20)
    m.write(b"x" * (40 << 20))
    hold()
time.sleep(1.6)
report(parent=os.getpid(), busy=busy, fat=fat)
"""


def _age(pid: int) -> float:
    """Seconds since the process started (what %CPU divides by)."""
    with open(f"/proc/{pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def ps_says(pids: list[int], columns: str) -> dict[int, list[str]]:
    out = subprocess.run(
        ["ps", "-o", columns, "--no-headers", "-p", ",".join(map(str, pids))],
        capture_output=True,
        text=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        fields = line.split(None, columns.count(","))
        rows[int(fields[0])] = fields[1:]
    return rows


@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_columns_agree_with_ps(capsys, source):
    if source == "bpf":
        require("bpf")
    with family(WORKERS, timeout=30) as fam:
        info = fam.info
        pids = [info["parent"], info["busy"], info["fat"]]
        # Positional pids and a -p list, both.
        argv = ["ps", "--source", source, "-o", "pid,user,vsz,rss,start,time,%cpu,%mem"]
        started = time.monotonic()
        ages = {pid: _age(pid) for pid in pids}
        assert main([*argv, str(pids[0]), "-p", f"{pids[1]},{pids[2]}"]) == 0
        lines = capsys.readouterr().out.splitlines()
        ours = {int(line.split()[0]): line.split() for line in lines[1:] if line[:1].isdigit()}
        theirs = ps_says(pids, "pid,user,vsz,rss,start_time,time,%cpu,%mem")
        apart = time.monotonic() - started
        assert set(ours) == set(pids) == set(theirs)
        for pid in pids:
            mine, ps = ours[pid], theirs[pid]
            assert mine[1] == ps[0]  # USER
            assert abs(int(mine[2]) - int(ps[1])) <= 1024  # VSZ KiB, moments apart
            assert abs(int(mine[3]) - int(ps[2])) <= 1024  # RSS KiB
            assert mine[4] == ps[3]  # START
            assert mine[5] == ps[4]  # TIME
            # %CPU, CPU time over age: read moments apart, it moves by up to
            # 100 * apart / age (the busy child's is falling fast, 1.6 s old).
            assert abs(float(mine[-2]) - float(ps[5])) <= 2.0 + 100 * apart / ages[pid]
            assert abs(float(mine[-1]) - float(ps[6])) <= 0.2  # %MEM
        # The busy child used CPU; the fat one holds its 40 MiB.
        assert float(ours[info["busy"]][-2]) > 1  # shared, loaded machines: little is sure
        assert int(ours[info["fat"]][3]) >= 40 * 1024

        assert main(["ps", "--json", "--source", source, *map(str, pids)]) == 0
        doc = json.loads(capsys.readouterr().out)
        by_pid = {t["pid"]: t for t in doc["tasks"]}
        assert by_pid[info["fat"]]["rss_kib"] >= 40 * 1024
        assert by_pid[info["busy"]]["cpu_time_s"] >= 0.1
        # The full command line, as ps -ww shows it (control characters as spaces).
        args = subprocess.run(
            ["ps", "-ww", "--no-headers", "-o", "args", "-p", str(info["parent"])],
            capture_output=True,
            text=True,
        ).stdout.rstrip("\n")
        ours_args = " ".join(by_pid[info["parent"]]["cmdline"])
        assert "".join(c if c.isprintable() else " " for c in ours_args) == args

        # --sort: descending RSS puts the fat child first.
        assert main(["ps", "--source", source, "-o", "pid", "--sort=-rss", *map(str, pids)]) == 0
        order = [int(x) for x in capsys.readouterr().out.split()[1:] if x.isdigit()]
        assert order[0] == info["fat"]


def test_forest_user_and_bad_columns(capsys):
    with family(PARENT_OF_THREE) as fam:
        parent, kids = fam.info["parent"], fam.info["kids"]
        pids = ",".join(map(str, [parent, *kids]))
        assert main(["ps", "--forest", "--json", "-p", pids]) == 0
        rows = json.loads(capsys.readouterr().out)["tasks"]
        assert [(t["pid"], t["depth"]) for t in rows] == [(parent, 0)] + [(k, 1) for k in kids]
        assert main(["ps", "--forest", "-o", "pid,comm", "-p", pids]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert all("\\_ kpeek-under-tes" in line for line in lines[2:5])  # comm: 15 chars
        # -u: root's processes include the family; nobody's do not.
        assert main(["ps", "--json", "-u", "root", "-p", pids]) == 0
        assert len(json.loads(capsys.readouterr().out)["tasks"]) == 4
        assert main(["ps", "--json", "-u", "nobody", "-p", pids]) == 0
        assert json.loads(capsys.readouterr().out)["tasks"] == []
    assert main(["ps", "-o", "pid,nosuchcolumn"]) == 2
    assert "unknown column" in capsys.readouterr().err


def test_task_address_hashed_raw_and_stable(capsys, tmp_path, monkeypatch):
    require("bpf")
    pid = str(os.getpid())
    argv = ["ps", "--source", "bpf", "-o", "pid,addr", pid]

    def address(*extra: str) -> str:
        assert main([*argv, *extra]) == 0
        (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(pid)]
        return line.split()[1]

    hashed = address()
    assert hashed.startswith("#")
    raw = address("--raw-pointers")
    assert raw.startswith("0xffff")  # --raw-pointers changes the text too
    # Without a raw request the default columns carry no ADDR; with it, they do.
    assert main(["ps", "--source", "bpf", "--raw-pointers", pid]) == 0
    assert raw in capsys.readouterr().out
    # --stable-ids: the same hash in two runs (two fresh processes).
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    runs = [
        subprocess.run(
            [*KPEEK, *argv, "--stable-ids"], capture_output=True, text=True, env=os.environ
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and "#" in runs[0]
    key = tmp_path / "kpeek" / "id-key"
    assert key.stat().st_mode & 0o777 == 0o600
    # A key in the environment does the same.
    env = {**os.environ, "KPEEK_ID_KEY": "shared secret"}
    runs = [subprocess.run([*KPEEK, *argv], capture_output=True, text=True, env=env).stdout
            for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1] and runs[0].split()[3] != hashed
