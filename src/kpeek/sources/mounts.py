"""Mounts by mount id: the device and file system type behind a descriptor.

fdinfo gives each descriptor's mnt_id. Mount ids are unique across mount
namespaces, so one table serves every process; a process in another mount
namespace adds its own /proc/PID/mountinfo the first time one of its mount
ids is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kpeek.sources.proc_tasks import Vanished, read_bytes

# File systems whose getattr may wait on a user-space server that is stuck;
# kpeek never asks them for attributes (lsof's -b does the same).
_SERVED_BY_USER_SPACE = ("fuse", "fuseblk")


@dataclass(frozen=True, slots=True)
class Mount:
    dev: int
    fstype: str

    @property
    def may_block(self) -> bool:
        return self.fstype.split(".", 1)[0] in _SERVED_BY_USER_SPACE


class MountTable:
    def __init__(self) -> None:
        self._mounts: dict[int, Mount] = {}
        self._read: set[int] = set()
        # (mnt_id, kind) -> (dev, mode) of pipefs/sockfs/anon inodes: every
        # pipe on one internal mount has the same device and type, so one
        # stat per kind serves them all.
        self.pseudo: dict[tuple[int, str], tuple[int, int]] = {}
        self._add("/proc/self/mountinfo")

    def lookup(self, tgid: int, mnt_id: int | None) -> Mount | None:
        """The mount ``mnt_id`` seen from process ``tgid``, None if not a mount in any
        table (pipefs, sockfs and other internal mounts)."""
        if mnt_id is None:
            return None
        if mnt_id not in self._mounts and tgid not in self._read:
            self._read.add(tgid)
            self._add(f"/proc/{tgid}/mountinfo")
        return self._mounts.get(mnt_id)

    def _add(self, path: str) -> None:
        try:
            raw = read_bytes(path)
        except (Vanished, OSError):
            return
        for line in raw.split(b"\n"):
            # id parent major:minor root mountpoint options [optional...] - fstype source super
            fields = line.split(b" ")
            if len(fields) < 7:
                continue
            try:
                sep = fields.index(b"-", 6)
            except ValueError:
                continue
            major, _, minor = fields[2].partition(b":")
            self._mounts[int(fields[0])] = Mount(
                os.makedev(int(major), int(minor)), fields[sep + 1].decode("ascii", "replace")
            )
