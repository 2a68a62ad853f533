"""Mounts by mount id: the device and file system type behind a descriptor.

fdinfo gives each descriptor's mnt_id. Mount ids are unique across mount
namespaces, so one table serves every process; a process in another mount
namespace adds its own /proc/PID/mountinfo the first time one of its mount
ids is missing.
"""

from __future__ import annotations

import os
import re

from kpeek.records import record
from kpeek.sources.proc_tasks import Vanished, read_bytes
from kpeek.textsafe import decode

TYPE_CHECKING = False
if TYPE_CHECKING:  # statx loads libc through ctypes: only where files are stat()ed
    from collections.abc import Iterable
    from typing import TypeVar

    from kpeek.sources.statx import Stat

    T = TypeVar("T")

# File systems whose getattr may wait on a user-space server that is stuck;
# kpeek never asks them for attributes (lsof's -b does the same).
_SERVED_BY_USER_SPACE = ("fuse", "fuseblk")
# File systems whose stat() gives every file the superblock's device (the
# one mountinfo shows) and the inode number fdinfo shows: there one mount id
# and inode number name one inode. Not so on btrfs (a subvolume has its own
# device), overlayfs (a layer's device and inode), NFS and others.
_OWN_INODE_NUMBERS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs", "devtmpfs", "ramfs"})


@record(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/PID/mountinfo."""

    mnt_id: int
    major: int
    minor: int
    mountpoint: str  # octal escapes (\\040 for a space) undone
    fstype: str
    source: str
    super_options: str

    @property
    def dev_text(self) -> str:
        return f"{self.major}:{self.minor}"


def parse_mountinfo(raw: bytes) -> list[MountEntry]:
    """Every well-formed line of a mountinfo file; malformed lines are skipped."""
    out = []
    for line in raw.split(b"\n"):
        # id parent major:minor root mountpoint options [optional...] - fstype source super
        fields = line.split(b" ")
        if len(fields) < 7:
            continue
        try:
            sep = fields.index(b"-", 6)
            major, _, minor = fields[2].partition(b":")
            entry = MountEntry(
                int(fields[0]), int(major), int(minor), _unescape(fields[4]),
                fields[sep + 1].decode("ascii", "replace") if sep + 1 < len(fields) else "",
                decode(fields[sep + 2]) if sep + 2 < len(fields) else "",
                decode(fields[sep + 3]) if sep + 3 < len(fields) else "")
        except ValueError:
            continue
        out.append(entry)
    return out


def deepest_mount(path: str, mounts: Iterable[tuple[str, T]]) -> T | None:
    """Of (mount point, value) pairs, the value of the deepest mount point
    that the absolute ``path`` lies under (the first, at equal depth)."""
    probe = path.rstrip("/") + "/"
    best_len, best = -1, None
    for mountpoint, value in mounts:
        prefix = mountpoint.rstrip("/") + "/"
        if probe.startswith(prefix) and len(prefix) > best_len:
            best_len, best = len(prefix), value
    return best


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """The mounts of ``path`` (a process's mountinfo); [] when it cannot be read."""
    try:
        return parse_mountinfo(read_bytes(path))
    except (Vanished, OSError):
        return []


def _unescape(field: bytes) -> str:
    # the kernel writes space, tab, newline and backslash as \ooo
    return decode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


@record(frozen=True, slots=True)
class Mount:
    """A mounted file system: its device and type (from mountinfo)."""

    dev: int
    fstype: str

    @property
    def may_block(self) -> bool:
        return self.fstype.split(".", 1)[0] in _SERVED_BY_USER_SPACE

    @property
    def own_inode_numbers(self) -> bool:
        return self.fstype in _OWN_INODE_NUMBERS


class MountTable:
    def __init__(self) -> None:
        self._mounts: dict[int, Mount] = {}
        self._read: set[int] = set()
        # (mnt_id, kind) -> (dev, mode) of pipefs/sockfs/anon inodes: every
        # pipe on one internal mount has the same device and type, so one
        # stat per kind serves them all.
        self.pseudo: dict[tuple[int, str], tuple[int, int]] = {}
        # mnt_id -> "pipe" or "socket": the kernel's pipe and socket mounts,
        # learned from a first link that reads pipe:[INO] or socket:[INO].
        self.names: dict[int | None, str] = {}
        # mnt_id -> ("pipe:[", dev, mode, "major:minor:") once both the name
        # and the stat of that mount's files are known: what names the rest.
        self.named: dict[int | None, tuple[str, int, int, str]] = {}
        # (mnt_id, ino) -> what stat said, on mounts with own_inode_numbers:
        # /dev/null or a shared log is stat()ed once, not once per holder.
        self.stats: dict[tuple[int, int], Stat] = {}
        self._prefixes: dict[int, str] = {}
        self._add("/proc/self/mountinfo")

    def inode_id(self, dev: int, ino: int) -> str:
        """"major:minor:ino", the model's name for an inode."""
        prefix = self._prefixes.get(dev)
        if prefix is None:
            prefix = self._prefixes[dev] = f"{os.major(dev)}:{os.minor(dev)}:"
        return prefix + str(ino)

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
        for m in read_mountinfo(path):
            self._mounts[m.mnt_id] = Mount(os.makedev(m.major, m.minor), m.fstype)
