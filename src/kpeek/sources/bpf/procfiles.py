"""lsof's cwd, rtd, txt and mem rows of every process: the processes and
their mapped files from two BPF iterator runs (snapshot_roots over tasks,
snapshot_maps over their memory maps) instead of a /proc/PID/maps parse per
process: the kernel formats maps line by line for /proc, here it sends each
mapped file once per process and each path once per run. The paths of
cwd, rtd and txt are read from /proc (readlink and stat of the link), once
per (mount, dentry) the task iterator names: no iterator pins a task's
fs_struct or its executable's file, and bpf_d_path on them crashed the
kernel (see snapshot.bpf.c).

The rows are those /proc gives (sources.fdfacts.process_files): same paths
(bpf_d_path is d_path, as maps uses), same inode ids, same order. A process
the iterators did not visit, or whose mapped files they could not give
exactly (a path bpf_d_path refused, a file mapped through a stacking file
system, whose maps line names the upper file), is left to the caller to
read from /proc.
"""

from __future__ import annotations

import os
import struct

from kpeek.filemodel import Mapped, ProcessFile, ProcessFileTable
from kpeek.sources.bpf.loaded import iterate
from kpeek.sources.bpf.snapshot import dev_inode_id, filtered
from kpeek.sources.fdfacts import PROCESS_LINKS, read_link
from kpeek.textsafe import decode

# struct kpeek_pfile_rec in snapshot.bpf.c
PF_REC = struct.Struct("<IIQQIIiI")
_PF_KEY = struct.Struct("<I4xQ16xi")  # tgid, file, path_len
# snapshot_roots: tgid, kind, dentry, ino, dev, flags; a link's mount follows
_PF_LINK = struct.Struct("<IIQQI8xI")
_MOUNT = struct.Struct("<Q")
_MAPPED_AT = struct.Struct("<QQQQ")  # struct kpeek_mapped_at: mount, dentry, start, end
PF_CWD, PF_RTD, PF_TXT, PF_MEM, PF_TASK = range(5)  # the first three index PROCESS_LINKS
PF_HAS_MM = 1
PATH_SEEN = -2
_UNKNOWN = ("", "")
_NONE: list[Mapped] = []  # no mapped file (shared: never changed)


def _backing_bit() -> int:
    """FMODE_BACKING on this kernel: a mapped file opened by a stacking file
    system (overlayfs) on its lower file, whose maps line shows the upper
    path (6.8+, file_user_path). 0 where f_path is what maps shows."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return 1 << 24 | 1 << 25  # unknown: either bit sends the process to /proc
    if (major, minor) < (6, 8):
        return 0
    return 1 << 25 if (major, minor) < (6, 13) else 1 << 24


def read_process_files(tgids: list[int] | None) -> tuple[dict[int, list[ProcessFile]], set[int]]:
    """(rows of each process, the processes to read from /proc instead).

    ``tgids`` None means every process. The rows of a process are its cwd,
    rtd and txt, then its mapped files in address order, each inode once and
    the executable's left out, as sources.fdfacts.process_files gives them.
    """
    parts, fallback = read_process_parts(tgids)
    return ProcessFileTable(parts).rows_by_process(), fallback


def read_process_parts(
    tgids: list[int] | None,
) -> tuple[dict[int, tuple[list[ProcessFile], list[Mapped]]], set[int]]:
    """read_process_files' rows as ProcessFileTable's parts: each process's
    cwd, rtd and txt rows, and its mapped files (path, inode id), one list
    shared by the processes that map the same files with the same executable
    (forks of one program)."""
    with filtered(tgids, threads=False, stacks=False, programs=PROGRAMS):
        roots, maps = read_rows(tgids)
    return parts_of(roots, maps, tgids)


PROGRAMS = ("snapshot_roots", "snapshot_maps")


def read_rows(tgids: list[int] | None) -> tuple[bytes, bytes]:
    """The two iterators' output, inside a filter span (snapshot.filtered)
    whose programs include PROGRAMS."""
    return iterate("snapshot", "snapshot_roots", tgids), iterate("snapshot", "snapshot_maps", tgids)


def read_parts(
    tgids: list[int] | None,
) -> tuple[dict[int, tuple[list[ProcessFile], list[Mapped]]], set[int]]:
    """read_process_parts' answer, inside a filter span whose programs
    include PROGRAMS (a whole-system snapshot's, which reads them beside its
    own walks)."""
    return parts_of(*read_rows(tgids), tgids)


def parts_of(
    roots: bytes, maps: bytes, tgids: list[int] | None
) -> tuple[dict[int, tuple[list[ProcessFile], list[Mapped]]], set[int]]:
    """read_process_parts' answer from the iterators' output."""
    rows, txt, want_maps = _roots(roots)
    fallback: set[int] = set()
    parts = _maps(maps, rows, txt, want_maps, fallback)
    fallback |= want_maps  # a process with memory but no mapped file seen
    if tgids is not None:
        fallback |= set(tgids) - rows.keys()
    for tgid in fallback:
        parts.pop(tgid, None)
    return parts, fallback


def _roots(out: bytes) -> tuple[dict[int, list[ProcessFile]], dict[int, str], set[int]]:
    """(cwd/rtd/txt rows of each process visited, its executable's inode
    id, those with memory whose mapped files are wanted).

    A row's path and inode id are read from /proc (readlink and stat of the
    link) once per (kind, mount, dentry) the kernel sent: the forks of one
    program share them. Reused only where the inode the kernel sent is the
    one that stat gave (the numbers come from memory a task may free under
    the iterator: a stale pair is read afresh, never trusted)."""
    rows: dict[int, list[ProcessFile]] = {}
    txt: dict[int, str] = {}
    want_maps: set[int] = set()
    known: dict[tuple[int, int, int], tuple[str, str]] = {}
    unpack, size, end = _PF_LINK.unpack_from, PF_REC.size, len(out)
    off = 0
    while off + size <= end:
        tgid, kind, dentry, ino, dev, flags = unpack(out, off)
        off += size
        if kind == PF_TASK:
            rows[tgid] = []
            if flags & PF_HAS_MM:
                want_maps.add(tgid)
            continue
        if kind > PF_TXT or off + _MOUNT.size > end:
            break  # not a record of this program's
        (mount,) = _MOUNT.unpack_from(out, off)
        off += _MOUNT.size
        own = rows.get(tgid)
        if own is None:
            continue
        inode = dev_inode_id(dev, ino)
        key = (kind, mount, dentry)
        got = known.get(key)
        if got is None or got[1] != inode:
            got = read_link(tgid, PROCESS_LINKS[kind][1])
            if got is None:
                continue  # gone, or not ours to read: as /proc shows it
            if got[1] == inode:
                known[key] = got
        own.append(ProcessFile(tgid, PROCESS_LINKS[kind][0], *got))
        if kind == PF_TXT:
            txt[tgid] = got[1]
    return rows, txt, want_maps


def _maps(
    out: bytes,
    rows: dict[int, list[ProcessFile]],
    txt: dict[int, str],
    want_maps: set[int],
    fallback: set[int],
) -> dict[int, tuple[list[ProcessFile], list[Mapped]]]:
    """Each process's (cwd/rtd/txt rows, mapped files) of those in ``rows``;
    those whose mapped files cannot be told exactly are added to ``fallback``."""
    backing = _backing_bit()
    # struct file address -> (path, inode id) of the row maps would show;
    # None for a file maps leaves out (no inode, not a path), _UNKNOWN for
    # one whose row BPF cannot give exactly (its processes go to /proc).
    files: dict[int, tuple[str, str] | None] = {}
    # The struct files each process maps, in address order: forks of one
    # program map the same files, so their rows are worked out once.
    groups: list[tuple[int, list[int]]] = []
    mapped: list[int] = []
    unpack, size, end = PF_REC.unpack_from, PF_REC.size, len(out)
    off, tgid_now = 0, -1
    unpack_key = _PF_KEY.unpack_from
    at_size = _MAPPED_AT.size
    # (mount, dentry) -> path read from /proc: every process that maps one
    # file through one mount (each its own struct file when each opened it,
    # as the dynamic loader does) shows one path.
    known: dict[tuple[int, int], str] = {}
    while off + size <= end:
        tgid, file, path_len = unpack_key(out, off)
        off += size
        if path_len != PATH_SEEN:
            if off + at_size > end:
                break
            _, _, _, ino, dev, f_mode, _, _ = unpack(out, off - size)
            mount, dentry, start, stop = _MAPPED_AT.unpack_from(out, off)
            off += at_size
            if f_mode & backing:
                files[file] = _UNKNOWN
            elif not ino:
                files[file] = None
            else:
                path = known.get((mount, dentry))
                if path is None:
                    path = _mapped_path(tgid, start, stop)
                    if path is not None:
                        known[(mount, dentry)] = path
                if path is None:
                    files[file] = _UNKNOWN  # unmapped since: /proc tells
                elif path[:1] != "/":
                    files[file] = None  # anon_inode:[...]: not a path, maps leaves it out
                else:
                    files[file] = (path, dev_inode_id(dev, ino))
        elif file not in files:
            files[file] = _UNKNOWN
        if tgid != tgid_now:
            tgid_now, mapped = tgid, []
            groups.append((tgid, mapped))
        mapped.append(file)
    made: dict[tuple, list[Mapped] | None] = {}
    parts = {tgid: (own, _NONE) for tgid, own in rows.items()}
    for tgid, addrs in groups:
        want_maps.discard(tgid)
        own = rows.get(tgid)
        if own is None:
            continue
        key = (txt.get(tgid, ""), *addrs)
        spec = made.get(key, _UNKNOWN)
        if spec is _UNKNOWN:
            spec = made[key] = _mem_rows(files, addrs, key[0])
        if spec is None:
            fallback.add(tgid)
        else:
            parts[tgid] = (own, spec)
    return parts


def _mapped_path(tgid: int, start: int, end: int) -> str | None:
    """The path, as maps shows it, of the file a process maps at [start,
    end), from /proc/PID/map_files (root only; the path is d_path's, as
    maps's is); None when that mapping is gone. Not checked against the
    inode by a stat: through overlayfs before 6.8 the link leads to the
    overlay's inode while maps (and the kernel's record) name the layer's.
    Runs in the snapshot's rows thread: imports nothing."""
    try:
        path = decode(os.readlink(f"/proc/{tgid}/map_files/{start:x}-{end:x}".encode()))
    except OSError:
        return None
    if "\n" in path:  # maps escapes it (seq_path), readlink does not
        path = path.replace("\n", "\\012")
    return path


def _mem_rows(
    files: dict[int, tuple[str, str] | None], addrs: list[int], exe: str
) -> list[Mapped] | None:
    """(path, inode id) of each row: each inode once, the executable's left
    out, as maps shows them; None when one of them is unknown here."""
    spec: list[Mapped] = []
    seen = {exe}
    for file in addrs:
        known = files[file]
        if known is _UNKNOWN:
            return None
        if known is not None and known[1] not in seen:
            seen.add(known[1])
            spec.append(known)
    return spec
