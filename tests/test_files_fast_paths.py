"""The fast paths of ``kpeek files`` against the reference ones, on real
families: the same bytes, the same rows, the same open files.

- lsof's cwd/rtd/txt/mem rows from BPF iterators against /proc (readlink,
  stat and /proc/PID/maps), including mapped files that are deleted or
  have a newline in their name, a chroot and a deleted working directory;
- the JSON document assembled from pieces against jsonout.encode of
  files_document, for both sources, with a pipe shared by more processes
  than the endpoint lists show, sockets, locks, ptys, eventfds;
- the text tables from cached cells and one format per line against fd_rows
  and plain.table;
- open-file identity by kcmp in one pass (about one kcmp per descriptor)
  against one sort of every descriptor by kcmp, on 20,000 descriptors of
  one file shared by fork and dup.
"""

from __future__ import annotations

import functools
import gc
import io
import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from capabilities import require
from kpeek import jsonout
from kpeek.commands.files import drop_empty, fd_rows
from kpeek.render import files_text, plain
from kpeek.render.fdfacts import FdFacts
from kpeek.render.files_json import files_json
from kpeek.render.files_text import COLUMNS
from kpeek.render.tables import files_document
from kpeek.sources import fdfacts, take_snapshot
from kpeek.sources.kcmp import compare_files
from kpeek.sources.mounts import MountTable
from kpeek.sources.proc_files import list_fds, read_descriptor
from kpeek.sources.sharing import group_open_files
from scenarios import Family, children_of, family
from test_files_lsof_parity import EVERYTHING

# Children that share a pipe (more holders than an endpoint list shows),
# dup one end, and hold mapped files the way /proc shows them unusually:
# deleted, with a newline in the name, in a chroot, in a deleted cwd; and
# share a mapped memfd, a socket pair and a dup2 of a parent with a thread.
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
# A memfd (mapped too), a socket pair and a dup2 every child inherits, a thread.
import socket, threading
memfd = os.memfd_create("kpeek-fast")
os.write(memfd, b"m" * 4096)
keep.append(mmap.mmap(memfd, 4096))
sa, sb = socket.socketpair()
os.dup2(sb.fileno(), 100)
# A shared anonymous mapping, a shmem file: named, [anon_shmem:NAME] in
# maps (6.2+) and no mem row; where the kernel lacks ANON_VMA_NAME (this
# machine's) the prctl fails and it is "/dev/zero (deleted)", a mem row.
import ctypes
shared = mmap.mmap(-1, 8192, flags=mmap.MAP_SHARED)
keep.append(shared)
at = ctypes.addressof(ctypes.c_char.from_buffer(shared))
ctypes.CDLL(None).prctl(0x53564D41, 0, ctypes.c_ulong(at), ctypes.c_ulong(8192),
                        ctypes.c_char_p(b"kpeek-shm"))  # PR_SET_VMA, ..._ANON_NAME
threading.Thread(target=threading.Event().wait, daemon=True).start()
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
# Report once the chroot and the deleted cwd are in place (the children
# race to them): the rows are read at once.
import time
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not (
        os.readlink(f"/proc/{kids[0]}/root") == tmp
        and os.readlink(f"/proc/{kids[1]}/cwd").endswith("(deleted)")):
    time.sleep(0.01)
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


def test_procfs_rows_read_in_a_child_are_those_read_after(scenes):
    """A whole-system procfs snapshot reads the process rows in a forked
    child beside its walk: the same rows as fdfacts reads in this process
    (deleted and newline names, memfds, shared lists), and the child reaped."""
    from kpeek.filemodel import ProcessFileTable
    from kpeek.sources import procfs

    pids = _pids(scenes)
    snap = procfs.take_snapshot(None, threads=False, process_files=True)
    assert isinstance(snap.process_files, ProcessFileTable)
    shown = {t.tgid for t in snap.processes()}
    assert set(pids) <= shown and len(shown) > fdfacts.FEW
    for pid in pids:
        assert snap.process_files.of(pid) == fdfacts.process_files(pid), pid
    paths = {r.path for pid in pids for r in snap.process_files.of(pid)}
    assert f"{scenes[1].info['tmp']}/new\\012line" in paths
    assert _zombies() == []


def _zombies() -> list[str]:
    """This process's children that ended and were not reaped."""
    out = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                        out.append(child)
    return out


def test_a_read_in_a_child_answers_fails_quietly_or_is_ended():
    from kpeek.forked import InChild

    assert InChild(lambda n: {"rows": [(n, "cwd", "/")]}, 7).result() == {"rows": [(7, "cwd", "/")]}
    assert InChild(lambda: 1 / 0).result() is None  # the caller reads it itself
    assert InChild(lambda: object()).result() is None  # not marshal data
    # Raw bytes, as the child yields them, in pieces of at most 1 MiB
    big = [b"a" * 3_000_000, b"", b"b" * 5]
    pieces = list(InChild(lambda: iter(big), raw=True).pieces() or ())
    assert b"".join(pieces) == b"".join(big) and max(map(len, pieces)) == 1 << 20
    assert InChild(lambda: [b"x", 1 / 0], raw=True).pieces() is None
    import time

    stuck = InChild(time.sleep, 60)
    pid = stuck._pid
    stuck.cancel()
    assert not os.path.exists(f"/proc/{pid}")
    assert _zombies() == []
    # Every answer's memfd is closed: read, failed, cancelled or never read.
    gc.collect()  # files earlier tests left to the collector are not counted
    before = set(os.listdir("/proc/self/fd"))
    InChild(lambda: 1).result()
    InChild(lambda: 1 / 0).result()
    InChild(time.sleep, 60).cancel()
    unread = InChild(lambda: iter([b"x"]), raw=True).pieces()
    assert unread is not None
    del unread
    gc.collect()
    assert set(os.listdir("/proc/self/fd")) - before == set()


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
    # The memfd (a descriptor and a mem row), the dup2 and the socket pair in every child
    assert any(i.type == "memfd" for i in snap.inodes.values())
    assert any(pf.path.startswith("/memfd:kpeek-fast") for pf in snap.process_files)
    assert sum(d.fd == 100 for d in snap.fds) > 12
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
    lines: dict = {}  # one memo for every table, as kpeek files keeps it
    shared = 0
    for pick in (None, chosen):
        for t in sorted(snap.processes(), key=lambda t: t.pid):
            reference, fast = io.StringIO(), io.StringIO()
            rows = fd_rows(snap, t, pick, facts)
            if rows:
                plain.table(*drop_empty(COLUMNS, rows), reference)
            assert files_text.process_table(cells, t, pick, fast, lines) == bool(rows)
            assert fast.getvalue() == reference.getvalue()
            shared += sum(r[0] == "mem" for r in rows)
    assert shared > 20  # the forks' mem rows came from blocks made once
    assert len(cells.blocks) < shared
    everything = scenes[0].info["parent"]
    text = io.StringIO()
    files_text.process_table(cells, snap.task(everything), None, text, lines)
    assert "LOCK" in text.getvalue() and " -> " in text.getvalue() and "[eventfd" in text.getvalue()


# 20,000 descriptors of one file: one open file inherited by 1,000 processes
# and dup()ed 9 times in each, and in each a second open of it dup()ed 9 times
# (1,000 more open files of 10 descriptors).
OPENS_OF_ONE_FILE = """
import tempfile
path = tempfile.mktemp(prefix="kpeek-opens-")
shared = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
kids = []
for _ in range(1000):
    kid = os.fork()
    if kid == 0:
        for _ in range(9):
            os.dup(shared)
        own = os.open(path, os.O_RDWR)
        for _ in range(9):
            os.dup(own)
        hold()
    kids.append(kid)
os.close(shared)
report(parent=os.getpid(), kids=kids, tmp=path)
"""


def _by_sort(members, compare):
    """The partition by one sort of every descriptor by kcmp (the reference)."""
    ordered = sorted(
        members, key=functools.cmp_to_key(lambda a, b: compare(a.tgid, a.fd, b.tgid, b.fd))
    )
    groups = [[ordered[0]]]
    for d in ordered[1:]:
        head = groups[-1][0]
        if compare(head.tgid, head.fd, d.tgid, d.fd) == 0:
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups


def test_open_file_identity_costs_about_one_kcmp_per_descriptor():
    require("root")
    with family(OPENS_OF_ONE_FILE, timeout=120) as fam:
        try:
            kids = fam.info["kids"]
            mounts = MountTable()
            raw = [read_descriptor(k, fd, mounts) for k in kids for fd in list_fds(k)]
            ino = os.stat(fam.info["tmp"]).st_ino
            mine = [d for d in raw if d.ino == ino]
            assert len(mine) == 20_000
            calls = 0

            def counted(*args: int) -> int:
                nonlocal calls
                calls += 1
                return compare_files(*args)

            groups = group_open_files(mine, counted)
            assert calls < 2 * len(mine) + 1_001 * 12  # not 20,000 x log2(20,000)
            assert sorted(len(g) for g in groups) == [10] * 1000 + [10_000]
            reference = _by_sort(mine, compare_files)
            as_sets = sorted(sorted((d.tgid, d.fd) for d in g) for g in groups)
            assert as_sets == sorted(sorted((d.tgid, d.fd) for d in g) for g in reference)
        finally:
            os.unlink(fam.info["tmp"])


@pytest.mark.parametrize("raw", [False, True])
def test_task_entries_are_task_dicts(scenes, raw):
    """The JSON fast path formats each process's entry itself: the same bytes
    as task_dict's, kernel stacks and a blocker (set here) included."""
    require("bpf")
    import dataclasses

    from kpeek.render.files_json import _Pieces
    from kpeek.render.tables import task_dict

    snap = take_snapshot("bpf", pids=_pids(scenes), threads=True, stacks=True)
    pieces = _Pieces(snap, FdFacts(snap), raw)
    tasks = [*snap.tasks, dataclasses.replace(snap.tasks[0], blocker=snap.tasks[0].address)]
    assert any(t.kernel_stack for t in tasks) and any(t.is_thread for t in tasks)
    for t in tasks:
        assert pieces.task(t) + b"}" == jsonout.encode(task_dict(t, raw))


class _Children:
    """Counts the children forked (forked.InChild) and tells which failed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from kpeek import forked

        self.made: list[bool] = []
        self.pids: list[int] = []
        real, start = forked.InChild.pieces, forked.InChild.__init__

        def init(child, *args, **kwargs):
            start(child, *args, **kwargs)
            self.pids.append(child._pid)

        def pieces(child):
            got = real(child)
            self.made.append(got is not None)
            return got

        monkeypatch.setattr(forked.InChild, "pieces", pieces)
        monkeypatch.setattr(forked.InChild, "__init__", init)
        monkeypatch.setattr(forked, "MIN_ITEMS", 0)  # split these small families too
        monkeypatch.delenv("KPEEK_NO_FORK", raising=False)


def _fail_in_child(monkeypatch: pytest.MonkeyPatch, module, name: str) -> None:
    """Make module.name raise in a forked child only."""
    parent, real = os.getpid(), getattr(module, name)

    def failing(*args, **kwargs):
        if os.getpid() != parent:
            raise MemoryError("as a child might")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("source", ["bpf", "procfs"])
def test_json_half_made_in_a_child_is_the_reference_document(scenes, source, monkeypatch):
    """The document's second part made by a forked child: the same bytes as
    jsonout.encode of files_document; and again when the child fails (its
    part made here) or is not wanted (the reader stopped: ended and reaped)."""
    if source == "bpf":
        require("bpf")
    from kpeek.render import files_json as fj

    pids = _pids(scenes)
    snap = fdfacts.enrich(take_snapshot(source, pids=pids, threads=False), pids)
    procs = sorted(snap.processes(), key=lambda t: t.pid)
    chosen = {(d.tgid, d.fd) for d in snap.fds if d.fd % 3 == 0}
    children = _Children(monkeypatch)
    for shown, pick in ((procs, None), (procs[1:], chosen)):
        reference = jsonout.encode(
            {"schema": "kpeek.files/1", **files_document(snap, shown, False, pick)}
        )
        assert files_json(snap, shown, False, pick) == reference
    assert children.made == [True, True]
    _fail_in_child(monkeypatch, fj, "_process_entries")
    assert files_json(snap, procs) == jsonout.encode(
        {"schema": "kpeek.files/1", **files_document(snap, procs)}
    )
    assert children.made[2:] == [False]
    # A reader that stops after the first pieces: the child is ended.
    chunks = fj.files_json_chunks(snap, procs)
    next(chunks), next(chunks)
    chunks.close()
    assert len(children.pids) == 4 and children.made[3:] == []
    assert _zombies() == [] and not os.path.exists(f"/proc/{children.pids[-1]}")


@pytest.mark.parametrize("tty", [False, True])
def test_text_half_written_by_a_child_is_the_same(scenes, monkeypatch, tty):
    """kpeek files' tables, the second half written by a forked child: the
    same text as when written here alone (styled for a terminal in both
    halves or in neither), to a file and to a StringIO; and when the child
    fails."""
    from kpeek.commands import files as files_command
    from kpeek.render import files_text

    pids = _pids(scenes)
    snap = fdfacts.enrich(take_snapshot("procfs", pids=pids, threads=False), pids)
    procs = sorted(snap.processes(), key=lambda t: t.pid)

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return tty

    def written() -> str:
        out, real = Out(), sys.stdout
        sys.stdout = out
        try:
            files_command._print_tables(snap, procs)
        finally:
            sys.stdout = real
        return out.getvalue()

    alone = written()  # too small to split
    assert ("\x1b[1mPID " in alone) == tty
    children = _Children(monkeypatch)
    monkeypatch.setattr("kpeek.forked._BATCH", 3)  # the child's text in several batches
    assert written() == alone
    _fail_in_child(monkeypatch, files_text, "process_table")
    assert written() == alone
    assert children.made == [True, False]
