"""Who could wake a task that waits on one descriptor: the other end.

A reader of an empty pipe is woken by a write (or the last close) through a
write end; a writer to a full pipe by a read through a read end; a socket by
its peer socket, wherever that is held. :func:`Ends.wakers` answers for one
descriptor and one direction ("in": data to read, "out": room to write)
with either the processes holding the other end, or the reason something
outside the processes we see could wake it (a remote peer, a terminal, a
listening socket, anyone who may open a FIFO), or neither: nobody holds the
other end at all. A terminal's other end is its master side (/dev/ptmx, held
by a terminal emulator, sshd or tmux), matched by fdinfo's tty-index; and
the master side's other end is the terminal, held by the programs in it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import field
from operator import attrgetter

from kpeek.diagnose.fdindex import index_of, socket_inode
from kpeek.model import FileDescriptor, OpenFile, Snapshot, Socket, Task
from kpeek.records import record
from kpeek.sources.fdinfo_details import parse, read_fdinfo

_PTS = re.compile(r"/dev/pts/(\d+)")
_PTMX = ("/dev/ptmx", "/dev/pts/ptmx")


@record(frozen=True)
class Wake:
    """The wakers of one wait on one descriptor."""

    resource: str  # what is waited for, in words ("data on pipe:[12] (fd 3)")
    other_end: str  # "the write end", "the peer socket:[9]"
    holders: dict[int, tuple[int, ...]] = field(default_factory=dict)  # tgid -> fds
    outside: str | None = None  # why something we cannot see may wake it
    kind: str = "pipe"  # pipe fifo socket


def _writable(flags: int) -> bool:
    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)


def _readable(flags: int) -> bool:
    return (flags & os.O_ACCMODE) in (os.O_RDONLY, os.O_RDWR)


class Ends:
    """Indexes over one snapshot for finding the other end of descriptors."""

    def __init__(self, snapshot: Snapshot, notes: list[str]) -> None:
        self.snapshot = snapshot
        self.notes = notes
        self.index = index_of(snapshot)
        self._sockets: dict[int, Socket] | None = None
        self._masters: dict[int, dict[int, tuple[int, ...]]] | None = None

    def file(self, tgid: int, fd: int) -> OpenFile | None:
        return self.index.file(tgid, fd)

    def sockets(self) -> dict:
        """Socket inode -> model.Socket for every socket a descriptor holds,
        with ``peer`` set for unix connections (sock_diag) and for TCP
        connections whose other end is on this machine (the same two
        addresses, swapped)."""
        if self._sockets is None:
            from kpeek.sources.sockets import describe

            holders = {}
            for ino in self.index.socket_numbers():
                held = self.index.socket_holders(ino)
                if held:
                    holders[ino] = held[0].tgid
            found = describe(holders, holders)
            # The same two addresses may be in use in two network namespaces.
            ends = {(s.netns, s.local, s.remote): s for s in found.values()
                    if s.protocol == "tcp" and s.remote and s.state != "LISTEN"}
            for ino, s in found.items():
                other = ends.get((s.netns, s.remote, s.local)) if s.protocol == "tcp" else None
                if other is not None and other.inode != ino:
                    found[ino] = dataclasses.replace(s, peer=other.inode)
            self._sockets = found
        return self._sockets

    def wakers(self, task: Task, fd: int, direction: str) -> Wake | None:
        """The wakers of ``task`` waiting on its ``fd`` for ``direction``;
        None when the descriptor is not in the snapshot."""
        f = self.file(task.tgid, fd)
        if f is None:
            return None
        inode = self.snapshot.inodes.get(f.inode)
        kind = inode.type if inode else ""
        if kind in ("pipe", "fifo"):
            return self._pipe(f, fd, direction, kind, task.tgid)
        if kind == "socket" or socket_inode(f) is not None:
            return self._socket(f, fd, direction)
        if kind == "chardev" and (pts := _PTS.fullmatch(f.path)):
            return self._terminal(f, fd, direction, int(pts[1]))
        if kind == "chardev" and f.path in _PTMX and (index := _pts_index(task.tgid, fd)) \
                is not None:
            return self._master(f, fd, direction, index)
        if f.path == "anon_inode:[eventfd]":
            return self._eventfd(f, fd, direction)
        if f.path == "anon_inode:[pidfd]" and direction == "in":
            pid = _pidfd_pid(task.tgid, fd)
            if pid is not None and pid > 0:  # -1: it has exited and been reaped
                return Wake(f"{f.path}, fd {fd}", "",
                            {pid: ()}, None, "pidfd")
        what = f"{f.path} (fd {fd})"
        return Wake(f"{'data on' if direction == 'in' else 'room in'} {what}", "", kind=kind,
                    outside=f"{what} is woken by events outside the processes")

    def _pipe(self, f: OpenFile, fd: int, direction: str, kind: str, tgid: int) -> Wake:
        want = _writable if direction == "in" else _readable
        holders = by_process(self.index.holders(f.inode, want))
        end = "the write end" if direction == "in" else "the read end"
        what = "data or end-of-file on" if direction == "in" else "room to write in"
        if kind == "mqueue":
            end = "the queue open for writing" if direction == "in" else \
                "the queue open for reading"
            what = "a message on" if direction == "in" else "room on"
        outside = None
        if kind in ("fifo", "mqueue") and not holders.keys() - {tgid}:
            # Only the waiter holds the other end (a daemon that opened its
            # command FIFO read-write): whoever opens the FIFO (or the
            # message queue, by name) next wakes it. Held elsewhere, those
            # holders are the wakers, as for a pipe.
            outside = f"any process may open {'the FIFO' if kind == 'fifo' else 'the queue'} " \
                      f"{f.path}"
        return Wake(f"{what} {f.path} (fd {fd})", end, holders, outside, kind)

    def message_queue(self, task: Task, fd: int, direction: str) -> Wake | None:
        """A POSIX message queue (mq_timedreceive/mq_timedsend with no
        timeout) waits, like a FIFO, on the processes holding the queue open
        for the other direction."""
        f = self.file(task.tgid, fd)
        return self._pipe(f, fd, direction, "mqueue", task.tgid) if f is not None else None

    def _terminal(self, f: OpenFile, fd: int, direction: str, index: int) -> Wake:
        """A pseudo-terminal's input comes from, and its output is drained by,
        whoever holds its master side."""
        what = "input on" if direction == "in" else "room to write on"
        resource = f"{what} the terminal {f.path} (fd {fd})"
        holders = self.masters().get(index)
        if not holders:
            return Wake(resource, "", kind="tty",
                        outside="its master side is in no descriptor table we could read")
        return Wake(resource, "its master side (/dev/ptmx)", holders, None, "tty")

    def _master(self, f: OpenFile, fd: int, direction: str, index: int) -> Wake:
        """A terminal's master side reads what its programs write and writes
        what they read: its wakers hold the terminal itself (/dev/pts/N)."""
        what = "output from" if direction == "in" else "room to write to"
        resource = f"{what} the terminal /dev/pts/{index} ({f.path}, fd {fd})"
        holders = by_process(d for other in self.snapshot.open_files.values()
                             if other.path == f"/dev/pts/{index}"
                             for d in self.snapshot.holders(other.id))
        if not holders:
            return Wake(resource, "", kind="tty",
                        outside=f"any process may open the terminal /dev/pts/{index}")
        return Wake(resource, f"the terminal /dev/pts/{index}", holders, None, "tty")

    def _eventfd(self, f: OpenFile, fd: int, direction: str) -> Wake:
        """An eventfd's counter is written (or drained) through the same open
        file, passed on by fork, dup or a unix socket: its holders, the
        waiter's own process included (another of its threads may write)."""
        what = "a write to" if direction == "in" else "a read of"
        return Wake(f"{what} {f.path} (fd {fd})", "the eventfd",
                    by_process(self.snapshot.holders(f.id)), None, "eventfd")

    def masters(self) -> dict[int, dict[int, tuple[int, ...]]]:
        """pts number -> tgid -> the fds holding that terminal's master side
        (each /dev/ptmx descriptor's fdinfo names its pts)."""
        if self._masters is None:
            found: dict[int, list[FileDescriptor]] = {}
            for f in self.snapshot.open_files.values():
                if f.path not in _PTMX:
                    continue
                for d in self.snapshot.holders(f.id):
                    index = _pts_index(d.tgid, d.fd)
                    if index is not None:
                        found.setdefault(index, []).append(d)
            self._masters = {index: by_process(ds) for index, ds in found.items()}
        return self._masters

    def _socket(self, f: OpenFile, fd: int, direction: str) -> Wake:
        ino = socket_inode(f)
        info = self.sockets().get(ino) if ino is not None else None
        what = "data on" if direction == "in" else "room to send on"
        if info is None:
            return Wake(f"{what} {f.path} (fd {fd})", "", kind="socket",
                        outside="a socket that no network namespace's tables list (not "
                                "unix or TCP, or its namespace could not be entered)")
        label = f"{f.path} (fd {fd}, {info.protocol or info.family} {info.type})"
        if info.state == "LISTEN":
            return Wake(f"a connection on {label}", "", kind="socket",
                        outside="connections come from anywhere")
        if info.peer is None:
            if info.remote:
                return Wake(f"{what} {label}", "", kind="socket",
                            outside=f"its peer {info.remote} is not a socket of this machine "
                                    "that we see")
            return Wake(f"{what} {label}", "", kind="socket",
                        outside="an unconnected socket: anyone may send to it")
        holders = by_process(self.index.socket_holders(info.peer))
        if not holders:  # in a listener's accept queue, or in flight in a message
            return Wake(f"{what} {label}", "", kind="socket",
                        outside=f"its peer socket:[{info.peer}] is in no descriptor table")
        return Wake(f"{what} {label}", f"its peer socket:[{info.peer}]", holders, None, "socket")


def by_process(descriptors: Iterable[FileDescriptor]) -> dict[int, tuple[int, ...]]:
    """Holders as a Wake names them: tgid -> its fds, both ascending."""
    grouped: dict[int, list[int]] = {}
    for d in sorted(descriptors, key=attrgetter("tgid", "fd")):
        grouped.setdefault(d.tgid, []).append(d.fd)
    return {tgid: tuple(fds) for tgid, fds in grouped.items()}


def _pidfd_pid(tgid: int, fd: int) -> int | None:
    raw = read_fdinfo(tgid, fd)
    info = parse("anon_inode:[pidfd]", raw) if raw is not None else None
    return int(info["pid"]) if info and info.get("kind") == "pidfd" else None


def _pts_index(tgid: int, fd: int) -> int | None:
    """The pts number a /dev/ptmx descriptor is the master of (its fdinfo's tty-index)."""
    raw = read_fdinfo(tgid, fd)
    info = parse("/dev/ptmx", raw) if raw is not None else None
    return int(info["tty_index"]) if info and info.get("kind") == "ptmx" else None
