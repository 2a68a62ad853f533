"""The /proc source's short cuts against what each descriptor's own link and
stat say, on real families:

- a pipe's or socket's name made from fdinfo (its mount and inode) instead
  of a readlink, once a first link showed that mount;
- one stat per inode on mounts whose inode numbers name their inodes
  (/dev/null, a file on ext4 or tmpfs held by many), a stat per descriptor
  elsewhere;
- open files among many distinct opens of one file: one kcmp pass and a
  sort of one descriptor per open file, checked against a sort of every
  descriptor.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
from collections.abc import Iterator

import pytest

from capabilities import require
from kpeek.sources import filekind, proc_files, procfs
from kpeek.sources.kcmp import compare_files
from kpeek.sources.mounts import MountTable
from kpeek.sources.proc_files import parse_fdinfo, read_table
from kpeek.sources.sharing import group_open_files
from kpeek.textsafe import decode
from scenarios import Family, family
from test_files_fast_paths import _by_sort, _pids, scenes  # noqa: F401 (a fixture)

# Files on the root file system, on tmpfs and /dev/null, each held through
# fork and dup by many processes; pipes and socketpairs, shared and own.
MANY_HOLDERS = """
import tempfile
tmp = tempfile.mkdtemp(prefix="kpeek-read-")
shm = tempfile.mkdtemp(prefix="kpeek-read-", dir="/dev/shm")
on_disk = os.open(os.path.join(tmp, "disk"), os.O_RDWR | os.O_CREAT, 0o600)
os.write(on_disk, b"x" * 1234)
in_memory = os.open(os.path.join(shm, "mem"), os.O_RDWR | os.O_CREAT, 0o600)
os.write(in_memory, b"y" * 99)
r, w = os.pipe()
kids = []
for i in range(20):
    kid = os.fork()
    if kid == 0:
        keep = [os.open("/dev/null", os.O_WRONLY), os.dup(on_disk),
                os.open(os.path.join(tmp, "disk"), os.O_RDONLY),
                os.open(os.path.join(shm, "mem"), os.O_RDONLY), *os.pipe(),
                *[s.detach() for s in socket.socketpair()]]
        hold()
    kids.append(kid)
report(parent=os.getpid(), kids=kids, tmp=tmp, shm=shm)
"""


@pytest.fixture(scope="module")
def many() -> Iterator[Family]:
    require("root")
    with family(MANY_HOLDERS, timeout=60) as fam:
        try:
            yield fam
        finally:
            shutil.rmtree(fam.info["tmp"], ignore_errors=True)
            shutil.rmtree(fam.info["shm"], ignore_errors=True)


def test_each_descriptor_is_what_its_own_link_and_stat_say(scenes, many, monkeypatch):  # noqa: F811
    calls = {"readlink": 0, "stat": 0}

    def counted(name, real):
        def call(*args):
            calls[name] += 1
            return real(*args)

        return call

    monkeypatch.setattr(os, "readlink", counted("readlink", os.readlink))
    monkeypatch.setattr(proc_files, "stat_cached", counted("stat", proc_files.stat_cached))
    mounts = MountTable()
    tables = [read_table(pid, mounts) for pid in _pids([*scenes, many])]
    monkeypatch.undo()
    kinds = set()
    fds = 0
    for table, closed, refused in tables:
        assert not closed and not refused
        for d in table:
            link = f"/proc/{d.tgid}/fd/{d.fd}"
            st = os.stat(link)
            with open(f"/proc/{d.tgid}/fdinfo/{d.fd}", "rb") as f:
                pos, flags, mnt_id, _ = parse_fdinfo(f.read())
            assert d.path == decode(os.readlink(link.encode()))
            assert (d.dev, d.ino, d.mode) == (st.st_dev, st.st_ino, st.st_mode), d
            assert d.inode_id == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"
            assert (d.pos, d.flags, d.cloexec, d.mnt_id) == (
                pos, flags & ~os.O_CLOEXEC, bool(flags & os.O_CLOEXEC), mnt_id)  # fmt: skip
            if stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode):
                assert (d.nlink, d.size) == (st.st_nlink, st.st_size), d
            kinds.add(filekind.file_type(d.mode, d.path))
            fds += 1
    assert {"pipe", "socket", "regular", "chardev", "anon_inode"} <= kinds
    # Pipes and sockets after the first of each are named without a readlink;
    # /dev/null and the shared files are stat()ed once, not once per holder.
    named = sum(d.path.startswith(("pipe:", "socket:")) for t, _, _ in tables for d in t)
    assert calls["readlink"] <= fds - named + 2
    assert calls["stat"] < fds / 3


# One file opened before fork (shared by every child), then opened again by
# each child (own offset) and dup()ed: 401 open files of one inode, mount
# and access mode, 1,200 descriptors.
DISTINCT_OPENS = """
import tempfile
path = tempfile.mktemp(prefix="kpeek-opens-")
with open(path, "w") as f:
    f.write("z" * 100)
shared = os.open(path, os.O_RDONLY)
kids = []
for i in range(400):
    kid = os.fork()
    if kid == 0:
        own = os.open(path, os.O_RDONLY)
        os.lseek(own, i % 7, os.SEEK_SET)
        os.dup(own)
        hold()
    kids.append(kid)
os.close(shared)
report(parent=os.getpid(), kids=kids, path=path)
"""


def test_distinct_opens_of_one_file_cost_a_sort_of_the_open_files_only():
    require("root")
    with family(DISTINCT_OPENS, timeout=120) as fam:
        try:
            kids = fam.info["kids"]
            mounts = MountTable()
            ino = os.stat(fam.info["path"]).st_ino
            mine = [d for k in kids for d in read_table(k, mounts)[0] if d.ino == ino]
            assert len(mine) == 1200
            asked: list[tuple[int, ...]] = []
            parents = {k: fam.pid for k in kids}
            groups = group_open_files(mine, lambda *a: asked.append(a) or compare_files(*a),
                                      parents)
            as_sets = sorted(sorted((d.tgid, d.fd) for d in g) for g in groups)
            reference = _by_sort(mine, compare_files)
            assert as_sets == sorted(sorted((d.tgid, d.fd) for d in g) for g in reference)
            assert sorted(len(g) for g in groups) == [2] * 400 + [400]
            # About 2 per descriptor in the pass, then k log2 k for the k
            # open files (kcmp orders, it does not hash); no n log n.
            k = len(groups)
            assert len(asked) < 2 * len(mine) + k * math.log2(k)
        finally:
            os.unlink(fam.info["path"])


def test_whole_snapshot_is_the_same_with_and_without_the_short_cuts(scenes, many, monkeypatch):  # noqa: F811
    """A snapshot whose every link is read and every file stat()ed (no names
    from fdinfo, no stat shared by holders) is the very same snapshot."""
    pids = _pids([*scenes, many])
    fast = procfs.take_snapshot(pids, threads=False)
    monkeypatch.setattr(proc_files, "_NAMED_BY_INODE", ())
    monkeypatch.setattr(
        "kpeek.sources.mounts.Mount.own_inode_numbers", property(lambda self: False)
    )
    slow = procfs.take_snapshot(pids, threads=False)
    assert fast.fds == slow.fds
    assert fast.open_files == slow.open_files
    assert fast.inodes == slow.inodes


def test_open_file_ids_are_keyed_ids_of_their_lowest_descriptor(scenes, many):  # noqa: F811
    """The ids of a snapshot's open files, formatted for speed (ids.file_ids),
    are keyed_id("file", tgid, fd, inode id) of each one's lowest descriptor."""
    from kpeek.ids import keyed_id

    snap = procfs.take_snapshot(_pids([*scenes, many]), threads=False)
    assert len(snap.open_files) > 100
    for f in snap.open_files.values():
        first = min(snap.holders(f.id), key=lambda d: (d.tgid, d.fd))
        assert f.id == keyed_id("file", first.tgid, first.fd, f.inode)
