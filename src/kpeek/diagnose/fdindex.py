"""One index of a snapshot's descriptors, shared by every finder.

A machine of 10,000 tasks holds about 100,000 descriptors, and a diagnosis
asks about a few of them: the descriptor a sleeping task's system call
names, and the other holders of that file. So each part of the index is
built on first use, once per snapshot, in one pass (never one pass per
question, which made the doctor quadratic in the number of waits).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable
from functools import cached_property

from kpeek.model import FileDescriptor, OpenFile, Snapshot


def socket_inode(f: OpenFile) -> int | None:
    """The N of a socket's path, socket:[N] (sock_diag's inode number)."""
    if f.path.startswith("socket:[") and f.path.endswith("]"):
        try:
            return int(f.path[8:-1])
        except ValueError:
            return None
    return None


class FdIndex:
    """Lookups over one snapshot's descriptors, open files and inodes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    @cached_property
    def _tables(self) -> dict[int, dict[int, str]]:
        """tgid -> fd -> OpenFile.id"""
        self._index()
        return self._tables

    @cached_property
    def _by_file(self) -> dict[str, list[FileDescriptor]]:
        """OpenFile.id -> its descriptors"""
        self._index()
        return self._by_file

    def _index(self) -> None:
        """Both maps in one pass over the descriptors (the one cost that grows
        with them); the snapshot keeps them in (tgid, fd) order, so a run of
        one process's descriptors fills one table."""
        tables: dict[int, dict[int, str]] = {}
        by_file: dict[str, list[FileDescriptor]] = {}
        tgid, table = None, {}
        for d in self.snapshot.fds:
            if d.tgid != tgid:
                tgid = d.tgid
                table = tables.setdefault(tgid, {})
            table[d.fd] = d.open_file
            held = by_file.get(d.open_file)
            if held is None:
                by_file[d.open_file] = [d]
            else:
                held.append(d)
        self.__dict__["_tables"], self.__dict__["_by_file"] = tables, by_file

    @cached_property
    def _files_of_inode(self) -> dict[str, list[OpenFile]]:
        index: dict[str, list[OpenFile]] = defaultdict(list)
        for f in self.snapshot.open_files.values():
            index[f.inode].append(f)
        return dict(index)

    @cached_property
    def _socket_inodes(self) -> dict[int, str]:
        """Socket inode number (as in socket:[N], sock_diag's) -> Inode.id"""
        found = {}
        for f in self.snapshot.open_files.values():
            if f.path.startswith("socket:[") and (ino := socket_inode(f)) is not None:
                found[ino] = f.inode
        return found

    def file_id(self, tgid: int, fd: int) -> str | None:
        """The OpenFile id behind descriptor ``fd`` of ``tgid``."""
        return self._tables.get(tgid, {}).get(fd)

    def file(self, tgid: int, fd: int) -> OpenFile | None:
        return self.snapshot.open_files.get(self.file_id(tgid, fd) or "")

    def table(self, tgid: int) -> dict[int, str]:
        """fd -> OpenFile.id of one process."""
        return self._tables.get(tgid, {})

    def files_of_inode(self, inode: str) -> list[OpenFile]:
        return self._files_of_inode.get(inode, [])

    def path_of_inode(self, inode: str | None) -> str | None:
        files = self._files_of_inode.get(inode or "")
        return files[0].path if files else None

    def holders(self, inode: str,
                flags: Callable[[int], bool] | None = None) -> list[FileDescriptor]:
        """Every descriptor on ``inode`` whose open file's flags pass ``flags``,
        in (tgid, fd) order."""
        by_file = self._by_file
        found = [d for f in self.files_of_inode(inode) if flags is None or flags(f.flags)
                 for d in by_file.get(f.id, ())]
        found.sort(key=lambda d: (d.tgid, d.fd))
        return found

    def socket_holders(self, ino: int) -> list[FileDescriptor]:
        """Every descriptor on the socket whose inode number is ``ino``."""
        inode = self._socket_inodes.get(ino)
        return self.holders(inode) if inode is not None else []

    def socket_numbers(self) -> list[int]:
        """The inode number of every socket a descriptor holds."""
        return list(self._socket_inodes)


_last: tuple[weakref.ref, FdIndex] | None = None


def index_of(snapshot: Snapshot) -> FdIndex:
    """The index of ``snapshot`` (one snapshot is indexed at a time)."""
    global _last
    if _last is None or _last[0]() is not snapshot:
        _last = (weakref.ref(snapshot), FdIndex(snapshot))
    return _last[1]
