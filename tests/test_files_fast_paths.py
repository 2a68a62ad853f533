"""The fast paths of ``kpeek files`` against the reference ones, on real
families: the same bytes, the same rows, the same open files.

- lsof's cwd/rtd/txt/mem rows from BPF iterators against /proc (readlink,
  stat and /proc/PID/maps), including mapped files that are deleted or
  have a newline in their name, a chroot and a deleted working directory;
- the JSON document assembled from pieces against jsonout.encode of
  files_document, for both sources, with a pipe shared by more processes
  than the endpoint lists show, sockets, locks, ptys, eventfds;
- the text tables from cached cells and one format per line against fd_rows
  and plain.table.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator

import pytest

from capabilities import require
from kpeek import jsonout
from kpeek.commands.files import COLUMNS, drop_empty, fd_rows
from kpeek.render import files_text, plain
from kpeek.render.fdfacts import FdFacts
from kpeek.render.files_json import files_json
from kpeek.render.tables import files_document
from kpeek.sources import fdfacts, take_snapshot
from scenarios import Family, children_of, family
from test_files_lsof_parity import EVERYTHING

# Children that share a pipe (more holders than an endpoint list shows),
# dup one end, and hold mapped files the way /proc shows them unusually:
# deleted, with a newline in the name, in a chroot, in a deleted cwd.
MAPPINGS = """
import mmap, tempfile
tmp = tempfile.mkdtemp(prefix="kpeek-fast-")
r, w = os.pipe()
def mapped(name, delete):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(b"m" * 4096)
    with open(path, "rb") as f:
        keep.append(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ))
    if delete:
        os.unlink(path)
keep = []
mapped("plain", False)
mapped("new\\nline", False)
mapped("gone", True)
kids = []
for i in range(12):
    kid = os.fork()
    if kid == 0:
        os.dup(r if i % 2 else w)
        if i == 0:
            os.chroot(tmp)
        elif i == 1:
            d = os.path.join(tmp, "cwd-gone")
            os.mkdir(d)
            os.chdir(d)
            os.rmdir(d)
        hold()
    kids.append(kid)
report(parent=os.getpid(), kids=kids, tmp=tmp)
"""


@pytest.fixture(scope="module")
def scenes() -> Iterator[list[Family]]:
    require("root")
    with family(EVERYTHING, timeout=60) as everything, family(MAPPINGS, timeout=60) as mappings:
        try:
            yield [everything, mappings]
        finally:
            for fam in (everything, mappings):
                shutil.rmtree(fam.info["tmp"], ignore_errors=True)


def _pids(scenes: list[Family]) -> list[int]:
    pids = []
    for fam in scenes:
        pids += [fam.pid, *children_of(fam.pid)]
    return sorted(set(pids))


def test_bpf_process_rows_are_those_of_proc(scenes):
    require("bpf")
    from kpeek.sources.bpf.procfiles import read_process_files

    pids = _pids(scenes)
    rows, fallback = read_process_files(pids)
    assert not fallback
    mem = 0
    for pid in pids:
        assert rows[pid] == fdfacts.process_files(pid), pid
        mem += sum(r.kind == "mem" for r in rows[pid])
    assert mem > 20
    paths = {r.path for pid in pids for r in rows[pid]}
    tmp = scenes[1].info["tmp"]
    assert f"{tmp}/new\\012line" in paths  # as maps escapes it
    assert f"{tmp}/gone (deleted)" in paths
    assert f"{tmp}/cwd-gone (deleted)" in paths
    # Whole system: the same rows for every process both sources can read.
    everyone, fallback = read_process_files(None)
    for pid in pids:
        assert everyone[pid] == rows[pid]


@pytest.mark.parametrize("source", ["bpf", "procfs"])
@pytest.mark.parametrize("raw", [False, True])
def test_json_from_pieces_is_the_reference_document(scenes, source, raw):
    if source == "bpf":
        require("bpf")
    pids = _pids(scenes)
    snap = take_snapshot(source, pids=pids, threads=False)
    procs = sorted(snap.processes(), key=lambda t: t.pid)
    snap = fdfacts.enrich(snap, pids)
    assert any(d.get("kind") == "eventfd" for d in snap.details.values())
    assert snap.locks and snap.sockets and snap.process_files
    reference = jsonout.encode(
        {"schema": "kpeek.files/1", **files_document(snap, procs, raw_pointers=raw)}
    )
    assert files_json(snap, procs, raw) == reference
    assert b'"endpoints_total":' in reference  # the shared pipe's lists are cut
    # Some descriptors only (as lsof's selections choose them).
    chosen = {(d.tgid, d.fd) for d in snap.fds if d.fd % 3 == 0}
    assert files_json(snap, procs[1:], raw, chosen) == jsonout.encode(
        {"schema": "kpeek.files/1", **files_document(snap, procs[1:], raw, chosen)}
    )


@pytest.mark.parametrize("source", ["bpf", "procfs"])
def test_text_tables_are_the_reference_lines(scenes, source):
    if source == "bpf":
        require("bpf")
    pids = _pids(scenes)
    snap = take_snapshot(source, pids=pids, threads=False)
    snap = fdfacts.enrich(snap, pids)
    facts = FdFacts(snap)
    cells = files_text.FileCells(snap, facts)
    chosen = {(d.tgid, d.fd) for d in snap.fds if d.fd % 2}
    for pick in (None, chosen):
        for t in sorted(snap.processes(), key=lambda t: t.pid):
            reference, fast = io.StringIO(), io.StringIO()
            plain.table(*drop_empty(COLUMNS, fd_rows(snap, t, pick, facts)), reference)
            files_text.table(*drop_empty(COLUMNS, files_text.rows_of(cells, t, pick)), fast)
            assert fast.getvalue() == reference.getvalue()
    everything = scenes[0].info["parent"]
    text = io.StringIO()
    files_text.table(
        *drop_empty(COLUMNS, files_text.rows_of(cells, snap.task(everything), None)), text
    )
    assert "LOCK" in text.getvalue() and " -> " in text.getvalue() and "[eventfd" in text.getvalue()
