"""Descriptors from /proc/PID/fd and /proc/PID/fdinfo.

One RawDescriptor per fd: what /proc says about it before open files are
identified (see sharing.py). A descriptor closed mid-read is skipped and
counted by the caller.
"""

from __future__ import annotations

import os
from collections import namedtuple

from kpeek.sources.filekind import O_CLOEXEC
from kpeek.sources.mounts import MountTable
from kpeek.sources.proc_tasks import GONE, Vanished, read_bytes
from kpeek.sources.statx import Stat, stat_cached
from kpeek.textsafe import decode

# RawDescriptor.error for a file kpeek chose not to stat (see _describe).
UNASKED = "not asked: served from user space"


# One fd as /proc shows it: a tuple, made 130,000 times a snapshot (a plain
# namedtuple: typing.NamedTuple imports typing, 2 ms of each start-up).
RawDescriptor = namedtuple("RawDescriptor", (
    "tgid", "fd", "path", "dev", "ino", "mode", "nlink", "size", "pos",
    "flags",  # f_flags without O_CLOEXEC
    "cloexec", "mnt_id",
    "inode_id",  # "major:minor:ino"
    "error",  # why the file itself could not be examined, else None
), defaults=(None,))


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


def read_table(tgid: int, mounts: MountTable) -> tuple[list[RawDescriptor], int, bool]:
    """Every descriptor of a process by fd number, how many closed while it
    was read, and whether a descriptor was refused (those before it are kept).
    Raises Vanished (the process is gone) or PermissionError (its table).

    Three system calls per fd (open, read and close of fdinfo), a readlink
    for all but pipes and sockets, and a statx per file not seen before (see
    _describe).
    """
    base = b"/proc/%d/" % tgid
    try:
        names = os.listdir(base + b"fd")
    except GONE as e:
        raise Vanished(tgid) from e
    links, infos = base + b"fd/", base + b"fdinfo/"
    os_open, os_read, os_close = os.open, os.read, os.close
    flags = os.O_RDONLY | os.O_CLOEXEC
    out = []
    closed = 0
    for fd in sorted(map(int, names)):
        name = b"%d" % fd
        try:
            f = os_open(infos + name, flags)
            try:
                # pos, flags, mnt_id and ino are its first lines, well
                # within one read (an epoll's or a lock's lines follow).
                info = os_read(f, 4096)
            finally:
                os_close(f)
            out.append(_describe(tgid, fd, info, links + name, mounts))
        except (Vanished, FileNotFoundError, ProcessLookupError):
            closed += 1
        except PermissionError:
            return out, closed, True
    return out, closed, False


def read_descriptor(tgid: int, fd: int, mounts: MountTable) -> RawDescriptor:
    """One descriptor. Raises Vanished when it (or its process) is gone."""
    info = read_bytes(f"/proc/{tgid}/fdinfo/{fd}", small=True)
    return _describe(tgid, fd, info, f"/proc/{tgid}/fd/{fd}".encode(), mounts)


def _describe(tgid: int, fd: int, info: bytes, link: bytes, mounts: MountTable) -> RawDescriptor:
    """The descriptor whose fdinfo is ``info`` and whose /proc/PID/fd link is ``link``.

    The link is read only when its text is not known: every file on the
    kernel's pipe (socket) mount is named "pipe:[INO]" ("socket:[INO]"), so
    once a link so named showed that mount's id, fdinfo's mnt_id and ino
    name the others. The file is stat()ed only when no earlier descriptor
    told: pipes, sockets and anonymous inodes of one internal mount share a
    device and type (one stat per kind), and a file on a mount whose inode
    numbers name its inodes is stat()ed once per snapshot (MountTable.stats).

    Files on mounts served from user space (FUSE) are never stat()ed: their
    server may be the very thing that is stuck. Their inode is named from
    fdinfo's ino and the mount's device, their type left unknown.
    """
    words = info.split(None, 8)
    # Since 5.14: pos, flags, mnt_id and ino, each "name:\tvalue", first.
    if (
        len(words) > 7 and words[6] == b"ino:" and words[4] == b"mnt_id:"
        and words[2] == b"flags:" and words[0] == b"pos:"
    ):  # fmt: skip
        pos, flags, mnt_id, ino = int(words[1]), int(words[3], 8), int(words[5]), int(words[7])
        if ino and (named := mounts.named.get(mnt_id)) is not None:
            # A pipe or socket on a mount whose name, device and type an
            # earlier descriptor showed (half of all fds): as _raw makes it.
            head, dev, mode, id_prefix = named
            text = str(ino)
            return _new(RawDescriptor, (
                tgid, fd, head + text + "]", dev, ino, mode, 1, 0, pos, flags & ~O_CLOEXEC,
                flags & O_CLOEXEC != 0, mnt_id, id_prefix + text, None,
            ))  # fmt: skip
    else:  # before 5.14 (no ino), or an unexpected layout
        pos, flags, mnt_id, ino = parse_fdinfo(info)
    kind = mounts.names.get(mnt_id) if ino else None
    if kind is not None:
        path = f"{kind}:[{ino}]"
    else:
        try:
            target = os.readlink(link)
        except GONE as e:
            raise Vanished(link) from e
        path = decode(target)
        kind = None if target[:1] == b"/" else _pseudo_kind(path)
        if kind in _NAMED_BY_INODE and mnt_id is not None and path == f"{kind}:[{ino}]":
            mounts.names[mnt_id] = kind
    if kind and mnt_id is not None and (known := mounts.pseudo.get((mnt_id, kind))):
        return _raw(tgid, fd, path, known[0], ino, known[1], 1, 0, pos, flags, mnt_id, mounts)
    mount = None if kind else mounts.lookup(tgid, mnt_id)
    error = None
    if mount is not None and mount.may_block:
        st = Stat(mount.dev, ino, 0, 0, 0)
        error = UNASKED
    else:
        key = (mnt_id, ino) if ino and mount is not None and mount.own_inode_numbers else None
        st = mounts.stats.get(key) if key else None
        if st is None:
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
                st = Stat(mount.dev if mount else 0, ino, 0, 0, 0)
            else:
                if key:
                    mounts.stats[key] = st
    if kind and mnt_id is not None and not error:
        mounts.pseudo[(mnt_id, kind)] = (st.dev, st.mode)
        if mounts.names.get(mnt_id) == kind:
            mounts.named[mnt_id] = (f"{kind}:[", st.dev, st.mode, mounts.inode_id(st.dev, 0)[:-1])
    return _raw(
        tgid, fd, path, st.dev, st.ino, st.mode, st.nlink, st.size, pos, flags, mnt_id, mounts,
        error,
    )  # fmt: skip


# The kernel's mounts whose every file's link reads KIND:[INO] (pipefs_dname,
# sockfs_dname); anonymous inodes' names vary ([eventfd], [eventpoll]...).
_NAMED_BY_INODE = ("pipe", "socket")


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
    dev: int,
    ino: int,
    mode: int,
    nlink: int,
    size: int,
    pos: int,
    flags: int,
    mnt_id: int | None,
    mounts: MountTable,
    error: str | None = None,
) -> RawDescriptor:
    # tuple.__new__ directly: the NamedTuple's own __new__ is a Python call.
    return _new(RawDescriptor, (
        tgid, fd, path, dev, ino, mode, nlink, size, pos, flags & ~O_CLOEXEC,
        flags & O_CLOEXEC != 0, mnt_id, mounts.inode_id(dev, ino), error,
    ))  # fmt: skip


_new = tuple.__new__
