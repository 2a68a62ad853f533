"""Which pipe write ends keep a reader from ever seeing end-of-file.

A read() on an empty pipe returns end-of-file only when no descriptor
anywhere still refers to the pipe's write end. The classic bug: a child
dup2()s the read end onto its stdin and execs ``sort`` but forgets to close
the write end it inherited, so sort waits forever for end-of-file on a pipe
it can write to itself. Or the parent, which only set the pipeline up, keeps
a copy of the write end after the writer has finished.

Precisely, for one pipe (or FIFO) inode P in a snapshot:

- a *reader* of P is a process whose fd 0 is a read end of P, or which
  sleeps in pipe_read and holds a read end of P (and of no other pipe);
- a *writer* of P is a process, not a reader, whose fd 1 or fd 2 is a write
  end of P, or which sleeps in pipe_write holding a write end of P;
- when P has a reader, a descriptor of P's write end keeps the readers from
  end-of-file if it is held by a reader itself (it cannot write while it
  waits to read, so its own write end never goes away), or by a process
  that is not a writer and sleeps waiting for a child (wait4/waitid): the
  parent that kept its copy and now waits for the reader, which waits for
  it. A non-writer that is busy doing something else is not flagged: it may
  still be about to write (the classic parent writes through the raw fd
  before closing it).
"""

from __future__ import annotations

import os

from kpeek.model import FileDescriptor, Snapshot
from kpeek.records import record

PIPE_TYPES = ("pipe", "fifo")


@record(frozen=True, slots=True)
class BlockingEnd:
    """A write-end descriptor that keeps ``readers`` from end-of-file."""

    fd: FileDescriptor
    inode: str
    readers: tuple[int, ...]  # tgids
    self_held: bool  # the holder is one of the readers


def _mode(flags: int) -> int:
    return flags & os.O_ACCMODE


def _reads(flags: int) -> bool:
    return _mode(flags) in (os.O_RDONLY, os.O_RDWR)


def _writes(flags: int) -> bool:
    return _mode(flags) in (os.O_WRONLY, os.O_RDWR)


def blocking_write_ends(snap: Snapshot, tgids: set[int] | None = None) -> list[BlockingEnd]:
    """Write-end descriptors (of processes in ``tgids``, default all) that
    keep a reader of their pipe from end-of-file, per the module's rule."""
    shown = tgids if tgids is not None else {t.tgid for t in snap.processes()}
    wchan = {t.tgid: (t.wchan or "") for t in snap.processes()}
    read_ends: dict[str, list[FileDescriptor]] = {}
    write_ends: dict[str, list[FileDescriptor]] = {}
    for d in snap.fds:
        if d.tgid not in shown:
            continue
        f = snap.open_files.get(d.open_file)
        inode = snap.inodes.get(f.inode) if f else None
        if f is None or inode is None or inode.type not in PIPE_TYPES:
            continue
        if _reads(f.flags):
            read_ends.setdefault(f.inode, []).append(d)
        if _writes(f.flags):
            write_ends.setdefault(f.inode, []).append(d)

    readable_pipes: dict[int, set[str]] = {}
    for inode, ds in read_ends.items():
        for d in ds:
            readable_pipes.setdefault(d.tgid, set()).add(inode)

    found: list[BlockingEnd] = []
    for inode, writers_fds in sorted(write_ends.items()):
        readers = {
            d.tgid
            for d in read_ends.get(inode, ())
            if d.fd == 0
            or ("pipe_read" in wchan.get(d.tgid, "") and readable_pipes[d.tgid] == {inode})
        }
        if not readers:
            continue
        writers = {
            d.tgid
            for d in writers_fds
            if d.tgid not in readers
            and (d.fd in (1, 2) or "pipe_write" in wchan.get(d.tgid, ""))
        }
        for d in writers_fds:
            if d.tgid in writers:
                continue
            waiting_for_child = "do_wait" in wchan.get(d.tgid, "")
            if d.tgid in readers or waiting_for_child:
                found.append(BlockingEnd(d, inode, tuple(sorted(readers)), d.tgid in readers))
    return found
