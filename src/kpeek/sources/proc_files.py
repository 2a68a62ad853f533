"""Descriptors from /proc/PID/fd and /proc/PID/fdinfo.

One RawDescriptor per fd: what /proc says about it before open files are
identified (see sharing.py). A descriptor closed mid-read is skipped and
counted by the caller.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from kpeek.sources.mounts import MountTable
from kpeek.sources.proc_tasks import GONE, Vanished, read_bytes
from kpeek.sources.statx import Stat, stat_cached
from kpeek.textsafe import decode

O_CLOEXEC = 0o2000000

# RawDescriptor.error for a file kpeek chose not to stat (see read_descriptor).
UNASKED = "not asked: served from user space"


@dataclass(frozen=True, slots=True)
class RawDescriptor:
    tgid: int
    fd: int
    path: str
    dev: int
    ino: int
    mode: int
    nlink: int
    size: int
    pos: int
    flags: int  # f_flags without O_CLOEXEC
    cloexec: bool
    mnt_id: int | None
    error: str | None = None  # why the file itself could not be examined

    @property
    def inode_id(self) -> str:
        return f"{os.major(self.dev)}:{os.minor(self.dev)}:{self.ino}"


def file_type(mode: int, path: str) -> str:
    """What a descriptor refers to, in the words of the three-tables diagrams."""
    if path.startswith("anon_inode:"):
        return "anon_inode"
    if stat.S_ISREG(mode):
        return "memfd" if path.startswith("/memfd:") else "regular"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "pipe" if path.startswith("pipe:[") else "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    if stat.S_ISLNK(mode):
        return "symlink"
    if path.startswith(("pipe:[", "socket:[")):
        return path.split(":", 1)[0]
    return "unknown"


def parse_fdinfo(raw: bytes) -> tuple[int, int, int | None, int]:
    """(pos, f_flags, mnt_id, ino) from /proc/PID/fdinfo/FD; flags are octal there."""
    pos = flags = ino = 0
    mnt_id = None
    for line in raw.split(b"\n", 4)[:4]:
        key, _, value = line.partition(b":")
        if key == b"pos":
            pos = int(value)
        elif key == b"flags":
            flags = int(value, 8)
        elif key == b"mnt_id":
            mnt_id = int(value)
        elif key == b"ino":
            ino = int(value)
    return pos, flags, mnt_id, ino


def list_fds(tgid: int) -> list[int]:
    """Open descriptor numbers of a process. Raises Vanished or PermissionError."""
    try:
        return sorted(int(n) for n in os.listdir(f"/proc/{tgid}/fd"))
    except GONE as e:
        raise Vanished(tgid) from e


def read_descriptor(tgid: int, fd: int, mounts: MountTable) -> RawDescriptor:
    """One descriptor. Raises Vanished when it (or its process) is gone.

    Files on mounts served from user space (FUSE) are never stat()ed: their
    server may be the very thing that is stuck. Their inode is named from
    fdinfo's ino and the mount's device, their type left unknown.
    """
    link = f"/proc/{tgid}/fd/{fd}"
    try:
        path = decode(os.readlink(link.encode()))
    except GONE as e:
        raise Vanished(link) from e
    fdinfo = read_bytes(f"/proc/{tgid}/fdinfo/{fd}", small=True)
    pos, flags, mnt_id, fdinfo_ino = parse_fdinfo(fdinfo)
    error = None
    kind = _pseudo_kind(path)
    if kind and mnt_id is not None and (known := mounts.pseudo.get((mnt_id, kind))):
        return _raw(tgid, fd, path, Stat(known[0], fdinfo_ino, known[1], 1, 0), pos, flags, mnt_id)
    mount = None if kind else mounts.lookup(tgid, mnt_id)
    if mount is not None and mount.may_block:
        st = Stat(mount.dev, fdinfo_ino, 0, 0, 0)
        error = UNASKED
    else:
        try:
            st = stat_cached(link)
        except GONE as e:
            raise Vanished(link) from e
        except PermissionError:
            raise
        except OSError as e:
            # The descriptor is there but its file system will not describe
            # the file (EIO, ECONNABORTED...).
            error = e.strerror or str(e)
            st = Stat(mount.dev if mount else 0, fdinfo_ino, 0, 0, 0)
    if kind and mnt_id is not None and not error:
        mounts.pseudo[(mnt_id, kind)] = (st.dev, st.mode)
    return _raw(tgid, fd, path, st, pos, flags, mnt_id, error)


def _pseudo_kind(path: str) -> str | None:
    """pipe, socket or anon_inode for files on the kernel's internal mounts."""
    for kind in ("pipe", "socket", "anon_inode"):
        if path.startswith(kind + ":"):
            return kind
    return None


def _raw(
    tgid: int,
    fd: int,
    path: str,
    st: Stat,
    pos: int,
    flags: int,
    mnt_id: int | None,
    error: str | None = None,
) -> RawDescriptor:
    return RawDescriptor(
        tgid=tgid,
        fd=fd,
        path=path,
        dev=st.dev,
        ino=st.ino,
        mode=st.mode,
        nlink=st.nlink,
        size=st.size,
        pos=pos,
        flags=flags & ~O_CLOEXEC,
        cloexec=bool(flags & O_CLOEXEC),
        mnt_id=mnt_id,
        error=error,
    )
