"""Kept BPF programs (kpeek.sources.bpf.kept): the first kpeek process pins
what it loaded in /sys/fs/bpf/kpeek, later ones use the pins without libbpf.

Each test runs its kpeek processes in a private mount namespace with a
bpffs of its own at /sys/fs/bpf (bpffs_ns.py): the real kernel and real
pins, seen by nothing outside the test, and gone with the namespace.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpffs_ns import Bpffs, private_bpffs
from capabilities import require
from kpeek.sources.bpf import bpfsys, kept
from scenarios import PARENT_OF_THREE, PIPE_FORK_DUP2, family

# One process: get each named object (default: snapshot) and say how it got
# it, its programs' kernel ids, and whether libbpf came anywhere near.
PROBE = """
import json, sys
from kpeek.sources.bpf import bpfsys, kept, loaded
out = {}
for name in sys.argv[1:] or ["snapshot"]:
    obj = loaded.bpf_object(name)
    if isinstance(obj, kept.KeptObject):
        ids = {p: info.id for p, (_fd, info) in obj.programs.items()}
    else:
        ids = {p: bpfsys.ProgInfo(fd).id for p, fd in obj.program_fds().items()}
    out[name] = {"kept": isinstance(obj, kept.KeptObject), "ids": ids, "status": kept.status[name]}
out["libbpf_imported"] = "kpeek.sources.bpf.libbpf" in sys.modules
out["libbpf_mapped"] = "libbpf" in open("/proc/self/maps").read()
print(json.dumps(out))
"""


@pytest.fixture
def bpffs() -> Bpffs:
    require("root", "bpf")
    with private_bpffs() as ns:
        yield ns


def _probe(ns: Bpffs, *names: str, env: dict[str, str] | None = None) -> dict:
    r = ns.run([sys.executable, "-c", PROBE, *names], env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _key_dir(ns: Bpffs, name: str = "snapshot") -> str:
    found = [d for d in ns.key_dirs() if d.startswith(f"{name}-")]
    assert len(found) == 1, ns.key_dirs()
    return f"{ns.home}/{found[0]}"


def test_a_second_process_uses_the_first_ones_programs(bpffs: Bpffs) -> None:
    first = _probe(bpffs, "snapshot", "reader")
    assert not first["snapshot"]["kept"] and "then kept" in first["snapshot"]["status"]
    # the memory reader reads any address it is given: never pinned
    assert [d.split("-")[0] for d in bpffs.key_dirs()] == ["snapshot"]
    second = _probe(bpffs, "snapshot")
    assert second["snapshot"]["kept"], second["snapshot"]
    # the very programs the first process loaded, as the kernel numbers them
    assert second["snapshot"]["ids"] == first["snapshot"]["ids"]
    reader = _probe(bpffs, "reader")["reader"]
    assert not reader["kept"] and "never kept" in reader["status"], reader
    assert not second["libbpf_imported"] and not second["libbpf_mapped"]
    # and what the pins hold, asked from outside the namespace
    pin = f"{_key_dir(bpffs)}/{kept.PROG}snapshot_tasks"
    fd = bpfsys.obj_get(pin)
    try:
        assert bpfsys.ProgInfo(fd).id == first["snapshot"]["ids"]["snapshot_tasks"]
    finally:
        os.close(fd)
    # kpeek itself, through kept programs: a real answer, and it says how
    with family(PARENT_OF_THREE) as fam:
        r = bpffs.run([sys.executable, "-m", "kpeek", "ps", "--json", "-p", str(fam.pid)])
        assert r.returncode == 0, r.stderr
        assert {t["tgid"] for t in json.loads(r.stdout)["tasks"]} == {fam.pid}
    r = bpffs.run([sys.executable, "-m", "kpeek", "sources", "--json"])
    facts = {f["fact"]: f for f in json.loads(r.stdout)["facts"]}
    assert facts["the BPF programs themselves"]["source"].startswith("kept, pinned in "), facts


def test_kept_programs_see_what_a_fresh_load_sees(bpffs: Bpffs) -> None:
    """One process, one family: the snapshot and the lsof rows through the
    kept programs, then through a fresh libbpf load, are the same."""
    code = """
import dataclasses, json, os, sys
from kpeek.sources.bpf import kept, loaded, procfiles, snapshot
pids = [int(p) for p in sys.argv[1:]]
def take():
    snap = snapshot.take_snapshot(pids, stacks=True, all_namespaces=True)
    tasks = [{**dataclasses.asdict(t), "exec_start": 0, "cpu": 0} for t in snap.tasks]
    rows, fallback = procfiles.read_process_files(pids)
    return {"tasks": tasks, "fds": [dataclasses.asdict(d) for d in snap.fds],
            "files": {k: dataclasses.asdict(f) for k, f in snap.open_files.items()},
            "inodes": {k: dataclasses.asdict(i) for k, i in snap.inodes.items()},
            "notes": list(snap.notes), "fallback": sorted(fallback),
            "rows": {t: [dataclasses.asdict(r) for r in rs] for t, rs in rows.items()}}
kept_view = take()
assert isinstance(loaded.bpf_object("snapshot"), kept.KeptObject), kept.status
loaded._objects.clear()
loaded._iterators.clear()
os.environ["KPEEK_KEEP_BPF"] = "0"
fresh_view = take()
assert not isinstance(loaded.bpf_object("snapshot"), kept.KeptObject)
print(json.dumps([kept_view, fresh_view], default=str))
"""
    _probe(bpffs)  # publishes
    with family(PIPE_FORK_DUP2) as fam, family(PARENT_OF_THREE) as other:
        pids = [fam.pid, fam.info["child"], other.pid, *other.info["kids"]]
        r = bpffs.run([sys.executable, "-c", code, *map(str, pids)])
        assert r.returncode == 0, r.stderr
        through_kept, fresh = json.loads(r.stdout)
    assert through_kept == fresh
    assert {t["tgid"] for t in fresh["tasks"]} == set(pids)
    assert {d["tgid"] for d in fresh["fds"]} == set(pids)
    assert not [n for n in fresh["notes"] if "paths of" in n]


def test_a_first_process_that_runs_one_program_keeps_them_all(bpffs: Bpffs) -> None:
    """kpeek ps runs only the task iterator, and loads only it where nothing
    is kept; where its load is kept, it loads and pins every program, and
    kpeek files after it uses the pins."""
    with family(PIPE_FORK_DUP2) as fam:
        r = bpffs.run([sys.executable, "-m", "kpeek", "ps", "--json", "-p", str(fam.pid)])
        assert r.returncode == 0, r.stderr
        pins = set(os.listdir(_key_dir(bpffs)))
        assert {f"{kept.PROG}snapshot_files", f"{kept.PROG}snapshot_maps",
                f"{kept.PROG}lock_layout"} <= pins, pins
        assert _probe(bpffs)["snapshot"]["kept"]
        r = bpffs.run([sys.executable, "-m", "kpeek", "files", "--json", str(fam.pid)])
        assert r.returncode == 0, r.stderr
        assert [p["tgid"] for p in json.loads(r.stdout)["processes"]] == [fam.pid]


def test_publishing_removes_stale_key_directories(bpffs: Bpffs) -> None:
    _probe(bpffs)
    current = _key_dir(bpffs)
    # the pins of another kpeek version (or object), and a dead process's half-made dir
    stale = f"{bpffs.home}/snapshot-0000000000000000-{os.path.basename(current).split('-', 2)[2]}"
    os.rename(current, stale)
    os.mkdir(f"{bpffs.home}/{kept._TMP}snapshot-4999999", 0o700)
    assert _probe(bpffs)["snapshot"]["kept"] is False  # the stale one is not this key
    assert bpffs.key_dirs() == [os.path.basename(current)]
    assert _probe(bpffs)["snapshot"]["kept"] is True


def test_key_directories_not_root_only_are_not_trusted(bpffs: Bpffs) -> None:
    first = _probe(bpffs)
    key = _key_dir(bpffs)
    pin = f"{key}/{kept.PROG}snapshot_files"

    def untrusted(why: str) -> None:
        r = bpffs.run([sys.executable, "-c", PROBE])
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)["snapshot"]
        assert not out["kept"] and out["ids"] != first["snapshot"]["ids"], why
        assert "not trusted" in out["status"], out
        assert r.stderr.count("kpeek: note: kept BPF programs not used") == 1, r.stderr

    os.chown(key, 1000, 1000)
    untrusted("a key directory of uid 1000")
    os.chown(key, 0, 0)
    os.chmod(key, 0o770)
    untrusted("a group-writable key directory")
    os.chmod(key, 0o700)
    os.chown(pin, 1000, 0)
    untrusted("a pin of uid 1000")
    os.chown(pin, 0, 0)
    # two programs swapped: each pin must hold the program it is named after
    tasks = f"{key}/{kept.PROG}snapshot_tasks"
    os.rename(pin, f"{key}/swap")
    os.rename(tasks, pin)
    os.rename(f"{key}/swap", tasks)
    untrusted("pins swapped")
    os.rename(tasks, f"{key}/swap")
    os.rename(pin, tasks)
    os.rename(f"{key}/swap", pin)
    # kpeek's own directory writable by others
    os.chmod(bpffs.home, 0o777)
    untrusted("a world-writable kpeek directory")
    os.chmod(bpffs.home, 0o700)
    again = _probe(bpffs)["snapshot"]
    assert again["kept"] and again["ids"] == first["snapshot"]["ids"]


def _raw_run_script() -> str:
    return """
import json, os, sys, time
from kpeek.sources.bpf import kept, loaded, snapshot
pids = [int(p) for p in sys.argv[2:]]
deadline = time.monotonic() + float(sys.argv[1])
runs = 0
while time.monotonic() < deadline or runs < 20:
    # the kernel's own records: no Python-side filter hides another process's filter
    with snapshot.filtered(pids, threads=False, stacks=False):
        out = loaded.bpf_iterator("snapshot", "snapshot_tasks").run()
    got = set()
    off, size = 0, snapshot.TASK_REC.size
    while off + size <= len(out):
        rec = snapshot.TASK_REC.unpack_from(out, off)
        got.add(rec[4])
        off += size + max(rec[-2], 0)
    assert got == set(pids), (sorted(got), pids)
    snap = snapshot.take_snapshot(pids)
    assert {d.tgid for d in snap.fds} == set(pids)
    # a file whose path another process's run sent is not "seen" in this run
    assert not [n for n in snap.notes if "paths of" in n], snap.notes
    runs += 1
kept_now = isinstance(loaded.bpf_object("snapshot"), kept.KeptObject)
print(json.dumps({"runs": runs, "kept": kept_now}))
"""


def test_concurrent_processes_each_get_their_own_filter(bpffs: Bpffs) -> None:
    _probe(bpffs)
    with family(PIPE_FORK_DUP2) as a, family(PARENT_OF_THREE) as b:
        mine = [a.pid, a.info["child"]]
        theirs = [a.pid, a.info["child"], b.pid, *b.info["kids"]]  # overlapping: shared files
        procs = [bpffs.popen([sys.executable, "-c", _raw_run_script(), "6", *map(str, pids)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for pids in (mine, theirs)]
        try:
            results = [p.communicate(timeout=180) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        done = json.loads(out)
        assert done["kept"] and done["runs"] >= 20, done


def test_a_held_lock_makes_a_private_load_not_a_hang(bpffs: Bpffs) -> None:
    _probe(bpffs)
    fd = os.open(_key_dir(bpffs), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code = ("import os\nfrom kpeek.sources.bpf import kept, snapshot\n"
                "s = snapshot.take_snapshot([os.getpid()])\n"
                "print(len(s.tasks), kept.status['snapshot'])\n")
        r = bpffs.run([sys.executable, "-c", code], timeout=60)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    count, status = r.stdout.split(" ", 1)
    assert int(count) >= 1 and "was busy" in status, r.stdout


def test_forget_removes_every_pin(bpffs: Bpffs) -> None:
    _probe(bpffs, "snapshot", "reader")
    assert len(bpffs.key_dirs()) == 1
    r = bpffs.run([sys.executable, "-m", "kpeek", "sources", "--forget-kept"])
    assert r.returncode == 0 and r.stdout.startswith("removed 1 kept BPF object"), r
    assert not os.path.lexists(bpffs.home)
    r = bpffs.run([sys.executable, "-m", "kpeek", "sources", "--forget-kept", "--json"])
    assert r.returncode == 0 and json.loads(r.stdout)["removed"] == [], r
    # and without it, every process loads for itself: nothing pinned
    out = _probe(bpffs, env={**os.environ, "KPEEK_KEEP_BPF": "0"})
    assert not out["snapshot"]["kept"] and "KPEEK_KEEP_BPF=0" in out["snapshot"]["status"]
    assert not os.path.lexists(bpffs.home)


def test_key_names_follow_objects_json() -> None:
    """The key of each object is its sha256 as objects.json records it (read
    there without the json module), with the kernel, boot and kpeek version."""
    manifest = json.loads(Path(kept._MANIFEST).read_text())["objects"]
    assert kept._manifest_sha() == {n: e["object"] for n, e in manifest.items()}
    keys = kept.key_names()
    assert sorted(keys) == sorted(manifest)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "_")
    for name, key in keys.items():
        assert key.startswith(f"{name}-{manifest[name]['object'][:24]}-") and boot in key
        assert "." not in key  # bpffs refuses dots in names


def test_root_without_bpf_capabilities_does_not_use_kept_programs(bpffs: Bpffs) -> None:
    """Pins answer to file permissions only: a root process stripped of
    CAP_BPF and CAP_PERFMON could open them, but kpeek must not do more for
    it than it could do itself (refused, exit 3, as without kept programs)."""
    import shutil

    _probe(bpffs)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian system"
    r = bpffs.run([setpriv, "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m",
                   "kpeek", "ps", "--source", "bpf", "-p", str(os.getpid())], timeout=60)
    assert r.returncode == 3, r
    assert "Operation not permitted" in r.stderr and "note:" not in r.stderr, r.stderr
