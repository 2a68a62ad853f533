"""Facts lsof shows beyond the three tables, added to a live Snapshot.

Whichever source took the snapshot (BPF or /proc), these come from the live
kernel's userspace views, read once per fact and matched to the snapshot by
identity (inode numbers, fd numbers):

- sockets: family, addresses, state, unix peer (sources.sockets);
- locks: /proc/locks, each matched to the descriptors that own it through
  their fdinfo ``lock:`` lines, with the pids waiting on it;
- details of anonymous inodes and ptys from fdinfo (sources.fdinfo_details);
- lsof's cwd, rtd, txt and mem rows (no descriptor: /proc/PID/cwd, root,
  exe, maps).

Everything here may vanish while read; a vanished fact is left out.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable

from kpeek.errors import NotSupported
from kpeek.filemodel import Mapped, ProcessFileTable
from kpeek.model import FileLock, ProcessFile, Snapshot
from kpeek.sources import fdinfo_details
from kpeek.sources.statx import stat_inode_id
from kpeek.textsafe import decode


def enrich(snap: Snapshot, tgids: Iterable[int] | None = None) -> Snapshot:
    """``snap`` with sockets, locks, details and process rows of ``tgids`` (default: all
    processes in it)."""
    shown = sorted(set(tgids) if tgids is not None else {t.tgid for t in snap.processes()})
    return snap.derive(
        sockets=_sockets(snap),
        locks=tuple(_locks(snap)),
        details=_details(snap),
        process_files=_all_process_files(snap, shown),
    )


FEW = 32  # processes whose rows /proc gives faster than BPF (sources.bpf.loaded.PER_PROCESS)


def _all_process_files(snap: Snapshot, tgids: list[int]) -> ProcessFileTable:
    """The process rows of ``tgids`` in order: from BPF iterators when the
    snapshot came from BPF (two iterator runs for all), else from /proc."""
    by_bpf: dict[int, tuple[list[ProcessFile], list[Mapped]]] = {}
    if isinstance(snap.process_files, ProcessFileTable):  # read with the snapshot
        by_bpf = snap.process_files.by_process()
    elif snap.source == "bpf" and len(tgids) > FEW:
        # Not for a few processes: /proc gives their rows in about a
        # millisecond each, where BPF would load and verify two more programs.
        from kpeek.sources.bpf.procfiles import read_process_parts

        # Unfiltered for the rows of every process of a whole-system snapshot
        # (a filter set of thousands of pids costs more than it spares), but
        # filtered for a few even when the snapshot holds just those: kpeek
        # files PID read the memory maps of every process on the machine.
        everyone = len(tgids) > 256 and len(tgids) >= len({t.tgid for t in snap.processes()})
        try:
            by_bpf, _ = read_process_parts(None if everyone or len(tgids) > 65536 else tgids)
        except NotSupported:  # this kernel refused their programs: /proc has them all
            by_bpf = {}
    parts: dict[int, tuple[list[ProcessFile], list[Mapped]]] = {}
    parsed: dict[tuple[bytes, str], list[Mapped]] = {}  # one list per maps text and txt
    for tgid in tgids:
        rows = by_bpf.get(tgid)
        parts[tgid] = process_parts(tgid, parsed) if rows is None else rows
    return ProcessFileTable(parts)


def _sockets(snap: Snapshot) -> dict:
    holders: dict[int, int] = {}
    for f in snap.open_files.values():
        if f.path.startswith("socket:["):
            inode = snap.inodes.get(f.inode)
            if inode is not None and (fds := snap.holders(f.id)):
                holders.setdefault(inode.ino, fds[0].tgid)
    if not holders:  # the socket tables (socket, ipaddress, ctypes) only for sockets
        return {}
    from kpeek.sources import sockets

    return sockets.describe(holders, holders)


def _details(snap: Snapshot) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for f in snap.open_files.values():
        if not (f.path.startswith("anon_inode:") or f.path in ("/dev/ptmx", "/dev/pts/ptmx")):
            continue
        fds = snap.holders(f.id)
        raw = fdinfo_details.read_fdinfo(fds[0].tgid, fds[0].fd) if fds else None
        if raw is not None and (d := fdinfo_details.parse(f.path, raw)) is not None:
            out[f.id] = d
    return out


# -- locks ------------------------------------------------------------------


def _lock_key(line: str) -> tuple[tuple, bool] | None:
    """((kind, mode, pid, inode id, start, end), is_waiter) of a /proc/locks line."""
    words = line.split()
    waiter = len(words) > 1 and words[1] == "->"
    words = words[2:] if waiter else words[1:]
    if len(words) < 7:
        return None
    kind, _subtype, mode, pid, devino, start, end = words[:7]
    try:
        major, minor, ino = devino.split(":")
        inode = f"{int(major, 16)}:{int(minor, 16)}:{int(ino)}"
        return (kind, mode, int(pid), inode, int(start), None if end == "EOF" else int(end)), waiter
    except ValueError:
        return None


def read_locks() -> list[tuple[tuple, list[int]]]:
    """(lock key, waiting pids) for each lock in /proc/locks, in the kernel's order."""
    try:
        with open("/proc/locks", "rb") as f:
            lines = f.read().decode("ascii", "replace").splitlines()
    except OSError:
        return []
    locks: list[tuple[tuple, list[int]]] = []
    for line in lines:
        parsed = _lock_key(line)
        if parsed is None:
            continue
        key, waiter = parsed
        if waiter and locks:
            locks[-1][1].append(key[2])
        elif not waiter:
            locks.append((key, []))
    return locks


def _locks(snap: Snapshot) -> list[FileLock]:
    if snap.lock_contexts is not None and not snap.lock_contexts:
        # No inode shown was ever locked: /proc/locks, whose first read in a
        # process sleeps through an RCU grace period (about 15 ms here) with
        # every lock of the machine held up, cannot name one of them.
        return []
    locks = [(k, w) for k, w in read_locks() if k[3] in snap.inodes]
    if not locks:
        return []
    locked = {k[3] for k, _ in locks}
    owners: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for f in snap.open_files.values():
        if f.inode not in locked:
            continue
        for d in snap.holders(f.id):
            raw = fdinfo_details.read_fdinfo(d.tgid, d.fd)
            for line in fdinfo_details.lock_lines(raw or b""):
                parsed = _lock_key(line)
                if parsed is not None:
                    owners[parsed[0]].append((d.tgid, d.fd))
    return [
        FileLock(
            kind=k[0],
            mode=k[1],
            pid=k[2],
            inode=k[3],
            start=k[4],
            end=k[5],
            owners=tuple(sorted(owners.get(k, ()))),
            waiters=tuple(w),
        )
        for k, w in locks
    ]


# -- cwd, rtd, txt, mem -------------------------------------------------------


def process_files(tgid: int) -> list[ProcessFile]:
    """The cwd, rtd (root), txt (executable) and mem (mapped files) rows of one
    process; those it may not read are left out."""
    own, mapped = process_parts(tgid)
    return [*own, *[ProcessFile(tgid, "mem", path, inode) for path, inode in mapped]]


def process_parts(
    tgid: int, parsed: dict[tuple[bytes, str], list[Mapped]] | None = None
) -> tuple[list[ProcessFile], list[Mapped]]:
    """process_files' rows as ProcessFileTable's parts: the cwd, rtd and txt
    rows, and the mapped files (path, inode id) but the executable.

    ``parsed`` keeps each maps text's list across calls, by text and
    executable: the forks of one program (a pre-forked server's workers)
    usually map the very same text and share one list.
    """
    from kpeek.sources.proc_tasks import Vanished, read_bytes

    rows, txt = link_rows(tgid)
    try:
        maps = read_bytes(f"/proc/{tgid}/maps")
    except (Vanished, OSError):
        return rows, []
    key = (maps, txt)
    files = parsed.get(key) if parsed is not None else None
    if files is None:
        files = [(path, inode) for path, inode in mapped_files(maps) if inode != txt]
        if parsed is not None:
            parsed[key] = files
    return rows, files


PROCESS_LINKS = (("cwd", "cwd"), ("rtd", "root"), ("txt", "exe"))  # (row kind, /proc link)


def link_rows(tgid: int) -> tuple[list[ProcessFile], str]:
    """The cwd, rtd and txt rows of a process (those it may not read are
    left out), and its executable's inode id ("" when unknown)."""
    rows = []
    txt = ""
    for kind, link in PROCESS_LINKS:
        got = read_link(tgid, link)
        if got is None:
            continue
        rows.append(ProcessFile(tgid, kind, *got))
        if kind == "txt":
            txt = got[1]
    return rows, txt


def read_link(tgid: int, link: str) -> tuple[str, str] | None:
    """(path, inode id) of /proc/PID/<link> (readlink, and a stat that never
    waits on the file system); None when unreadable. Runs in the BPF
    snapshot's thread for process rows, so it imports nothing
    (bpf/snapshot.py says why)."""
    where = f"/proc/{tgid}/{link}"
    try:
        path = decode(os.readlink(where.encode()))
    except OSError:
        return None
    return path, stat_inode_id(where)


# A mapped file's line of /proc/PID/maps: address perms offset dev inode path,
# the path padded with spaces. Anonymous memory has inode 0; [heap], [vdso]
# and the like are not paths. Only "\n" ends a line: maps escapes it in
# names, not "\r".
_MAPPED_FILE = re.compile(rb"^\S+ \S+ \S+ ([0-9a-f]+):([0-9a-f]+) ([1-9][0-9]*) +(/.*)$", re.M)


def mapped_files(maps: bytes) -> list[tuple[str, str]]:
    """(path, inode id) of each file mapped in a maps text, each inode once,
    in address order."""
    seen: set[tuple[bytes, bytes, bytes]] = set()
    out = []
    for major, minor, ino, path in _MAPPED_FILE.findall(maps):
        if (major, minor, ino) in seen:
            continue
        seen.add((major, minor, ino))
        out.append((decode(path), f"{int(major, 16)}:{int(minor, 16)}:{int(ino)}"))
    return out
