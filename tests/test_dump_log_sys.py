"""log, sys and oops on the lab's dumps, against what the guest itself said."""

from __future__ import annotations

import json
import subprocess
import sys

from capabilities import require
from lab.fixtures import LabDumps


def kpeek(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpeek", *args], capture_output=True,
                          text=True, timeout=120)


def _in_order(lines: list[str], within: list[str]) -> list[str]:
    """The lines of ``lines`` that do not appear in ``within`` in the same order."""
    missing, at = [], 0
    for line in lines:
        try:
            at = within.index(line, at) + 1
        except ValueError:
            missing.append(line)
    return missing


def test_log_is_the_guests_dmesg(lab_dumps: LabDumps) -> None:
    guest = [line for line in lab_dumps.truth.dmesg.splitlines() if line.strip()]
    assert len(guest) > 100
    for dump in (lab_dumps.elf, lab_dumps.kdump):
        done = kpeek("-c", str(dump), "log")
        assert done.returncode == 0, done.stderr
        missing = _in_order(guest, done.stdout.splitlines())
        assert not missing, f"{len(missing)} guest lines not in kpeek log: {missing[:3]}"


def test_log_json_records(lab_dumps: LabDumps) -> None:
    done = kpeek("-c", str(lab_dumps.elf), "log", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["schema"] == "kpeek.log/1"
    records = doc["records"]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    (lists,) = [r for r in records if r["text"].startswith("kpeek_lists: good=")]
    assert lists["level"] == 6 and lists["caller"].startswith("T")  # pr_info from insmod
    hung = [r for r in records if "blocked for more than" in r["text"]]
    assert hung and all(r["level"] == 3 for r in hung)  # pr_err
    warnings = kpeek("-c", str(lab_dumps.elf), "log", "--level", "4", "--json")
    assert all(r["level"] <= 4 for r in json.loads(warnings.stdout)["records"])


def test_sys_on_the_running_guest(lab_dumps: LabDumps) -> None:
    truth = lab_dumps.truth
    done = kpeek("-c", str(lab_dumps.kdump), "sys", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["release"] == truth.release and doc["machine"] == "x86_64"
    assert len(doc["build_id"]) == 40
    assert doc["cpus"] == doc["cpus_online"] == 2
    assert doc["taint"] == truth.tainted and set(doc["taint_flags"]) == {"O", "E"}
    # the dump came a few seconds after the guest read /proc/uptime
    assert truth.uptime - 1 <= doc["uptime"] <= truth.uptime + 60
    assert doc["panic"] is None and doc["panic_cpu"] is None


def test_sys_and_oops_after_the_panic(lab_dumps: LabDumps) -> None:
    done = kpeek("-c", str(lab_dumps.panic), "sys", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["panic"] == "sysrq triggered crash"
    assert doc["panic_cpu"] in (0, 1) and "D" in doc["taint_flags"]  # D: it oopsed first
    oops = kpeek("-c", str(lab_dumps.panic), "oops", "--json")
    assert oops.returncode == 0, oops.stderr
    reports = json.loads(oops.stdout)["reports"]
    titles = [r["title"] for r in reports]
    assert any("kpeek_take_a_then_b" in t or "kpeek_take_b_then_a" in t for t in titles)
    assert any(r["kind"] == "bad-access" for r in reports), titles
    # the oopses the guest's console showed are in the dump's own log (the quiet
    # console drops lower-level lines, so only whole reports are compared)
    console = subprocess.run([sys.executable, "-m", "kpeek", "oops", "--json", "-"],
                             input=lab_dumps.panic_log, capture_output=True, text=True,
                             timeout=120)
    shown = {r["title"] for r in json.loads(console.stdout)["reports"]
             if r["kind"] == "bad-access"}
    assert shown and shown <= set(titles)


def test_log_and_sys_on_the_live_kernel() -> None:
    require("bpf")
    from kpeek.kernel.symbols import load_kallsyms

    has_data = load_kallsyms().address_of("prb") is not None
    for verb in ("log", "sys"):
        done = kpeek(verb)
        assert done.returncode == 0, done.stderr
        if not has_data:  # kallsyms with functions only: /dev/kmsg, uname, /proc, and a note
            assert done.stderr.startswith("note: read from"), done.stderr
