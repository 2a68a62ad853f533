"""statx(2) with AT_STATX_DONT_SYNC, through ctypes.

A plain stat() of /proc/PID/fd/N asks the file system for fresh attributes;
on a FUSE mount whose server is blocked that request never returns, and kpeek
would hang exactly when it is needed most. AT_STATX_DONT_SYNC makes network
and FUSE file systems answer from what they have cached.
"""

from __future__ import annotations

import ctypes
import os
import struct

from kpeek.records import record

AT_FDCWD = -100
AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC_STATS = 0x7FF

_libc = ctypes.CDLL(None, use_errno=True)
# statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *buf),
# called without argtypes (their conversions are a quarter of a call, some
# 30,000 calls a snapshot): the path is always bytes, the numbers fit an int.
_statx = getattr(_libc, "statx", None)

# struct statx: nlink @16 (u32), mode @28 (u16), ino @32, size @40 (u64),
# dev_major/dev_minor @136/@140 (u32); 256 bytes in all.
_LAYOUT = struct.Struct("=16xI8xH2xQQ88xII")
_Buffer = ctypes.c_char * 256


@record(frozen=True, slots=True)
class Stat:
    """What kpeek needs of a stat: device, inode number, mode, links, size."""

    dev: int
    ino: int
    mode: int
    nlink: int
    size: int


def stat_cached(path: str | bytes) -> Stat:
    """Attributes of the file ``path`` leads to, without waiting on its file system.

    Raises OSError like os.stat (FileNotFoundError, ProcessLookupError, ...).
    Falls back to os.stat where libc has no statx.
    """
    if _statx is None:
        st = os.stat(path)
        return Stat(st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_size)
    buf = _Buffer()
    if _statx(AT_FDCWD, os.fsencode(path), AT_STATX_DONT_SYNC, STATX_BASIC_STATS, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    nlink, mode, ino, size, major, minor = _LAYOUT.unpack_from(buf)
    return Stat(os.makedev(major, minor), ino, mode, nlink, size)


def stat_inode_id(path: str) -> str:
    """The inode id ("major:minor:ino") of the file ``path`` leads to, "" when it
    cannot be examined."""
    try:
        st = stat_cached(path)
    except OSError:
        return ""
    return f"{os.major(st.dev)}:{os.minor(st.dev)}:{st.ino}"
