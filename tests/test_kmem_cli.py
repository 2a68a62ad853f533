"""The crash-style verbs (struct, list, sym, rd, dis, task) on the live kernel,
their values checked against /proc, and their one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from capabilities import require
from fuse_scenarios import state, wait_for
from kpeek.cli import main
from scenarios import PARENT_OF_THREE, family

KPEEK = [sys.executable, "-m", "kpeek"]


def run_json(capsys, argv: list[str]) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


@pytest.fixture
def sleeper():
    """A process with three children and a known name, asleep (it reports
    just before it goes to sleep: on a loaded machine it may still run)."""
    with family(PARENT_OF_THREE) as fam:
        parent = fam.info["parent"]
        wait_for(lambda: state(parent) == "S", 10, "the parent asleep")
        yield parent, fam.info["kids"]


@pytest.mark.timeout(60)
def test_task_1_matches_proc(capsys):
    require("bpf")
    doc = run_json(capsys, ["task", "1"])
    status = proc_status(1)
    assert doc["schema"] == "kpeek.task/1"
    assert doc["pid"] == 1 and doc["tgid"] == int(status["Tgid"])
    assert doc["comm"] == status["Name"]
    assert doc["real_parent"]["pid"] == int(status["PPid"])
    assert doc["state"] in "RSDI" and status["State"][0] in "RSDI"


@pytest.mark.timeout(60)
def test_task_and_struct_members_match_proc(capsys, sleeper):
    require("bpf")
    pid, kids = sleeper
    task = run_json(capsys, ["task", str(pid)])
    assert task["comm"] == "kpeek-under-tes"  # TASK_COMM_LEN is 16
    assert task["children"] == 3 and task["state"] == "S"
    address = task["address"]
    doc = run_json(capsys, ["struct", "task_struct.pid,comm,tgid", address])
    assert doc["value"] == {"pid": pid, "comm": proc_status(pid)["Name"], "tgid": pid}
    assert main(["struct", "task_struct.pid,comm", address]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"pid = {pid}", f'comm = "{proc_status(pid)["Name"]}"']
    # the whole struct, nested members included
    whole = run_json(capsys, ["struct", "task_struct", address])["value"]
    assert whole["pid"] == pid and whole["se"]["load"]["weight"] > 0
    # the children list, counted as /proc counts it
    walk = run_json(capsys, ["list", address, "--head", "task_struct.children",
                             "-s", "task_struct.sibling", "-f", "pid,comm"])
    assert walk["complete"] and walk["count"] == 3
    assert sorted(e["fields"]["pid"] for e in walk["entries"]) == sorted(kids)
    assert main(["list", address, "--head", "task_struct.children",
                 "-s", "task_struct.sibling"]) == 0
    assert "3 entries; the list returns to its head" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_rd_shows_the_comm_bytes(capsys, sleeper):
    require("bpf")
    pid, _ = sleeper
    from kpeek.kernel.btf import load_vmlinux_btf

    comm_off = load_vmlinux_btf().lookup("struct task_struct").offsetof("comm")
    address = run_json(capsys, ["task", str(pid)])["address"]
    doc = run_json(capsys, ["rd", f"{address}+{comm_off:x}", "-n", "16", "-w", "1"])
    raw = bytes(int(w["value"], 16) for w in doc["words"])
    assert raw.split(b"\0")[0] == b"kpeek-under-tes"


def test_sym_round_trip_and_dis(capsys):
    require("bpf")
    doc = run_json(capsys, ["sym", "do_sys_openat2"])
    (sym,) = doc["symbols"]
    assert sym["name"] == "do_sys_openat2" and sym["offset"] == 0 and sym["size"] > 0
    inside = int(sym["address"], 16) + 5
    (back,) = run_json(capsys, ["sym", hex(inside)])["symbols"]
    assert back["name"] == "do_sys_openat2" and back["offset"] == 5
    dis = run_json(capsys, ["dis", "do_sys_openat2"])
    insns = dis["instructions"]
    assert insns[0]["address"] == sym["address"]
    calls = [i for i in insns if i["mnemonic"] == "call" and i["target"]]
    assert calls, "no symbolized call in do_sys_openat2"
    end = int(sym["address"], 16) + sym["size"]
    assert all(int(i["address"], 16) < end for i in insns)


def test_struct_layout(capsys):
    doc = run_json(capsys, ["struct", "list_head"])
    assert doc["size"] == 16
    assert [(m["name"], m["offset"], m["size"]) for m in doc["members"]] == [
        ("next", 0, 8), ("prev", 8, 8)]
    assert main(["struct", "sk_buff"]) == 0
    text = capsys.readouterr().out
    assert "cloned:1;" in text and "/* size: " in text
    from kpeek.commands.struct import layout
    from kpeek.kernel.btf import Kind, load_vmlinux_btf

    # without bitfields, members + holes + padding add up to the size (the
    # outer level: an anonymous union counts once, whatever it holds)
    btf = load_vmlinux_btf()
    checked = 0
    for t in btf.types():
        if t.kind != Kind.STRUCT or not t.name or checked >= 300:
            continue
        if any(m.bitfield_size for m in t.members):
            continue
        doc = layout(t)
        assert doc["member_bytes"] + doc["hole_bytes"] + doc["padding"] == t.size, t.name
        checked += 1
    pipe = layout(btf.lookup("struct pipe_inode_info"))
    assert pipe["member_bytes"] + pipe["hole_bytes"] + pipe["padding"] == pipe["size"]
    assert checked == 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["struct", "no_such_type_kpeek"], "no struct, union or type named"),
        (["struct", "task_struct.no_such_member"], "has no member 'no_such_member'"),
        (["struct", "task_struct.pid", "0x10"], "cannot read"),
        (["struct", "task_struct", "not-an-address"], "bad address"),
        (["rd", "0xffff800000000000"], "cannot read"),
        (["list", "0x10", "-s", "task_struct.sibling"], "cannot read"),
        (["sym", "no_such_symbol_kpeek"], "no kernel symbol"),
        (["dis", "0x10"], "not inside a kernel function"),
        (["task", "999999999"], "no task with pid"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    if argv[0] != "struct" or len(argv) > 2:
        require("bpf")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kpeek: ") and message in err


@pytest.mark.parametrize("argv", [["task", "1"], ["sym", "_text"], ["rd", "_text"],
                                  ["dis", "do_sys_openat2"], ["struct", "list_head", "0x1000"],
                                  ["list", "0x1000"]])
def test_non_root_is_not_permitted_exit_3(argv):
    require("root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    res = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *KPEEK, *argv],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/nonexistent"},
    )
    assert res.returncode == 3, res.stderr
    assert res.stderr.count("\n") == 1 and "root" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_layout_works_without_root():
    require("root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    res = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *KPEEK,
         "struct", "list_head"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/nonexistent"},
    )
    assert res.returncode == 0, res.stderr
    assert "struct list_head *next;" in res.stdout


@pytest.mark.timeout(60)
def test_hostile_comm_is_escaped_in_text_and_exact_in_json(capsys):
    require("bpf")
    evil = b"\x1b[31mX\n\xff"
    code = (
        f"open('/proc/self/comm', 'wb').write({evil!r})\n"
        "import sys, time; print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert main(["task", str(proc.pid)]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and '"\\x1b[31mX\\n\\xff"' in out
        address = run_json(capsys, ["task", str(proc.pid)])["address"]
        doc = run_json(capsys, ["struct", "task_struct.comm", address])
        assert doc["value"]["comm"].encode("utf-8", "surrogateescape") == evil
        assert main(["struct", "task_struct.comm", address]) == 0
        assert "\x1b" not in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait(timeout=10)
