"""kpeek log and sys on the live kernel, checked against dmesg, uname and
/proc: from memory where kallsyms lists the data symbols, else from
/dev/kmsg and uname(2)/proc/sys (this machine's kernel lists none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from capabilities import require

KPEEK = [sys.executable, "-m", "kpeek"]


def kpeek(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KPEEK, *args], capture_output=True, text=True, timeout=120)


def _prefixed(lines: list[str]) -> list[str]:
    """util-linux dmesg's lines with its record's time on every line of a
    record of many lines, where it indents the lines after the first: kpeek,
    like the kernel's own syslog(2) and console output (and busybox dmesg,
    checked in test_dump_log_sys), repeats it."""
    out: list[str] = []
    prefix = ""
    for line in lines:
        if line.startswith("[") and "] " in line:
            prefix = line[: line.index("] ") + 2]
        elif prefix and line.startswith(" " * len(prefix)):
            line = prefix + line[len(prefix):]
        out.append(line)
    return out


@pytest.mark.timeout(120)
def test_live_log_is_dmesg_with_our_own_record():
    require("root")
    marker = f"kpeek-live-log {uuid.uuid4().hex} tab\there back\\slash"
    with open("/dev/kmsg", "w") as f:
        f.write(f"<4>{marker}\n")
    text = kpeek("log")
    assert text.returncode == 0, text.stderr
    mine = [line for line in text.stdout.splitlines() if "kpeek-live-log" in line]
    # text output escapes a backslash (as every kernel string); JSON keeps it raw
    assert any(line.endswith("] " + marker.replace("\\", "\\\\")) for line in mine), mine
    # dmesg's own lines, in the same order (its buffer is read a moment earlier)
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    ours = text.stdout.splitlines()
    # (a backslash is escaped in kpeek's text: lines with one are left out here)
    theirs = [line for line in _prefixed(dmesg.splitlines())[-200:]
              if line.strip() and "\\" not in line]
    at = ours.index(theirs[0]) if theirs and theirs[0] in ours else None
    assert at is not None, theirs[:1]
    assert [line for line in ours[at:] if "\\" not in line][:len(theirs)] == theirs
    doc = json.loads(kpeek("log", "--json", "--level", "4").stdout)
    records = doc["records"]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert all(r["level"] <= 4 for r in records)
    [record] = [r for r in records if r["text"] == marker]
    assert record["level"] == 4 and record["facility"] == 1  # a write to /dev/kmsg: LOG_USER


@pytest.mark.timeout(60)
def test_live_sys_is_uname_and_proc():
    require("root")
    done = kpeek("sys", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    uts = os.uname()
    assert (doc["release"], doc["version"], doc["machine"], doc["nodename"]) == (
        uts.release, uts.version, uts.machine, uts.nodename)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    assert abs(doc["uptime"] - uptime) < 30
    with open("/proc/sys/kernel/tainted") as f:
        assert doc["taint"] == int(f.read())
    assert doc["cpus_online"] == len(os.sched_getaffinity(0)) or doc["cpus_online"] >= 1
    assert doc["panic"] is None
