"""Per-descriptor facts as lsof shows them: lock letters, socket names,
anonymous inodes explained and endpoints (``lsof +E``), from the model only.

Endpoints are the other descriptors that hold the other end of a pipe or
FIFO (same inode), a connected unix socket (the peer inode), a pty pair
(ptmx tty-index <-> /dev/pts/N) or an eventfd (same eventfd id).
"""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property
from itertools import groupby
from operator import attrgetter
from os import O_ACCMODE

from kpeek.filemodel import Inode, Mapped, ProcessFileTable
from kpeek.model import FileDescriptor, FileLock, OpenFile, ProcessFile, Snapshot, Socket
from kpeek.render.fileflags import ACCESS_MODES

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

# Other ends listed per descriptor; the rest are counted ("+N more").
MAX_ENDPOINTS = 8
_ACCESS_LETTER = {"O_RDONLY": "r", "O_WRONLY": "w", "O_RDWR": "u"}
# The same letters by f_flags & O_ACCMODE (access_mode's key): one lookup per end.
_LETTER_OF_MODE = {mode: _ACCESS_LETTER[name] for mode, name in ACCESS_MODES.items()}
_PER_PROCESS: list[FileDescriptor] = []  # a marker: candidates depend on the holder
_ENDED = frozenset({"pipe", "fifo", "socket"})
_UNKNOWN = object()


class Ends:
    """The other ends of the holders of one open file: the first
    MAX_ENDPOINTS candidates are those of every holder but the ones among
    them (``heads``), whose own lists leave them out (:meth:`of`); ``total``
    counts each holder's other ends in all."""

    __slots__ = ("_next", "heads", "per_holder", "shared", "total")

    def __init__(
        self, candidates: list[FileDescriptor], mine: int, per_holder: bool = False
    ) -> None:
        # Most lists are short (a pipe's two ends): kept as they are, not
        # copied (nothing changes them once the indexes are made).
        short = len(candidates) <= MAX_ENDPOINTS
        self.shared = candidates if short else candidates[:MAX_ENDPOINTS]
        self._next = candidates if short else candidates[: MAX_ENDPOINTS + 1]
        self.total = max(0, len(candidates) - mine)
        self.heads = {(o.tgid, o.fd) for o in self.shared}
        self.per_holder = per_holder  # made for one holder (an eventfd's)

    def of(self, d: FileDescriptor) -> list[FileDescriptor]:
        """The other ends ``d`` lists, never ``d`` itself."""
        key = (d.tgid, d.fd)
        if key not in self.heads:
            return self.shared
        return [o for o in self._next if (o.tgid, o.fd) != key][:MAX_ENDPOINTS]


class FdFacts:
    """Indexes over one snapshot, built once, for every descriptor's facts."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    @cached_property
    def _process_files(self) -> ProcessFileTable:
        rows = self.snap.process_files
        if isinstance(rows, ProcessFileTable):
            return rows
        # Sources give each process's rows together: grouped in C.
        index = {tgid: list(mine) for tgid, mine in groupby(rows, attrgetter("tgid"))}
        if sum(map(len, index.values())) != len(rows):  # not together after all
            index = defaultdict(list)
            for pf in rows:
                index[pf.tgid].append(pf)
        return ProcessFileTable({tgid: (mine, []) for tgid, mine in index.items()})

    def process_files(self, tgid: int) -> list[ProcessFile]:
        """The cwd/rtd/txt/mem rows of one process."""
        return self._process_files.of(tgid)

    def process_file_parts(self, tgid: int) -> tuple[list[ProcessFile], list[Mapped]]:
        """The rows of one process as (its own rows, mapped files (path,
        inode id) whose mem rows follow): the forks of one program share the
        very list of mapped files (see ProcessFileTable)."""
        return self._process_files.parts(tgid)

    @cached_property
    def _fds_by_inode(self) -> dict[str, list[FileDescriptor]]:
        index: dict[str, list[FileDescriptor]] = defaultdict(list)
        for d in self.snap.fds:
            index[self.snap.open_files[d.open_file].inode].append(d)
        return index

    @cached_property
    def _ino_of(self) -> dict[int, str]:
        """Socket inode number -> Inode.id, for the sockets in the snapshot."""
        return {i.ino: i.id for i in self.snap.inodes.values() if i.type == "socket"}

    @cached_property
    def _by_tty(self) -> tuple[dict[int, list[FileDescriptor]], dict[int, list[FileDescriptor]]]:
        masters: dict[int, list[FileDescriptor]] = defaultdict(list)
        slaves: dict[int, list[FileDescriptor]] = defaultdict(list)
        # Which open files are pty ends, asked once per file, not per descriptor.
        ends: dict[str, tuple[dict[int, list[FileDescriptor]], int]] = {}
        for f in self.snap.open_files.values():
            details = self.snap.details.get(f.id)
            if details and details.get("kind") == "ptmx":
                ends[f.id] = (masters, int(details["tty_index"]))  # type: ignore[call-overload]
            elif f.path.startswith("/dev/pts/") and (n := pts_index(f.path)) is not None:
                ends[f.id] = (slaves, n)
        if ends:
            for d in self.snap.fds:
                if (end := ends.get(d.open_file)) is not None:
                    end[0][end[1]].append(d)
        return masters, slaves

    @cached_property
    def _eventfds(self) -> dict[int, list[FileDescriptor]]:
        index: dict[int, list[FileDescriptor]] = defaultdict(list)
        ids = {
            file_id: int(details["id"])  # type: ignore[call-overload]
            for file_id, details in self.snap.details.items()
            if details.get("kind") == "eventfd" and "id" in details
        }
        if ids:
            for d in self.snap.fds:
                if (n := ids.get(d.open_file)) is not None:
                    index[n].append(d)
        return index

    @cached_property
    def _locks_by_fd(self) -> dict[tuple[int, int], list[FileLock]]:
        index: dict[tuple[int, int], list[FileLock]] = defaultdict(list)
        for lock in self.snap.locks:
            for owner in lock.owners:
                index[owner].append(lock)
        return index

    def socket(self, d: FileDescriptor) -> Socket | None:
        inode = self.snap.inodes.get(self.snap.open_files[d.open_file].inode)
        return self.snap.sockets.get(inode.ino) if inode and inode.type == "socket" else None

    def locks(self, d: FileDescriptor) -> list[FileLock]:
        return self._locks_by_fd.get((d.tgid, d.fd), [])

    def endpoints(self, d: FileDescriptor) -> list[FileDescriptor]:
        """The descriptors at the other end of ``d`` (other processes' ends of a
        pipe too), never ``d`` itself; at most MAX_ENDPOINTS of them (a pipe held
        by thousands of processes would make every row list every holder:
        quadratic). :meth:`endpoint_count` gives how many there are in all."""
        ends = self.ends(d)
        return ends.of(d) if ends is not None else []

    def endpoint_count(self, d: FileDescriptor) -> int:
        """How many other ends ``d`` has (counted without building them)."""
        ends = self.ends(d)
        return ends.total if ends is not None else 0

    def ends(self, d: FileDescriptor) -> Ends | None:
        """The other ends of the holders of d's open file; None when there are
        none. Made once per candidates list (both files of a pipe, the
        sockets of one peer share theirs), but an eventfd's: its other ends
        are those in other processes, one Ends per holder (``per_holder``)."""
        known = self._ends_of_file.get(d.open_file, _UNKNOWN)
        if known is _UNKNOWN:
            known = self._ends_of_file[d.open_file] = self._file_ends(d)
        if known is _PER_PROCESS:
            others = [e for e in self._eventfds.get(self._eventfd_id(d), []) if e.tgid != d.tgid]
            return Ends(others, 0, per_holder=True) if others else None
        return known  # type: ignore[return-value]

    def _file_ends(self, d: FileDescriptor) -> Ends | list[FileDescriptor] | None:
        f = self.snap.open_files[d.open_file]
        inode = self.snap.inodes.get(f.inode)
        kind = inode.type if inode else ""
        candidates = self._file_candidates(f, inode, kind)
        if candidates is _PER_PROCESS:
            return _PER_PROCESS
        if not candidates:
            return None
        # A pipe's or FIFO's candidates are all the holders of its inode, d too.
        mine = 1 if kind in ("pipe", "fifo") else 0
        made = self._ends_of_list.get((id(candidates), mine))
        if made is None:
            made = self._ends_of_list[id(candidates), mine] = Ends(candidates, mine)
        return made

    @cached_property
    def _ends_of_file(self) -> dict[str, Ends | list[FileDescriptor] | None]:
        return {}

    @cached_property
    def _ends_of_list(self) -> dict[tuple[int, int], Ends]:
        return {}

    def may_have_ends(self, f: OpenFile, kind: str) -> bool:
        """Whether the descriptors of ``f`` (its inode of type ``kind``) may
        have other ends: only pipes, FIFOs, sockets, ptys and files with
        details (eventfds, ptmx) do (see _file_candidates)."""
        return kind in _ENDED or f.id in self.snap.details or f.path.startswith("/dev/pts/")

    def _eventfd_id(self, d: FileDescriptor) -> int:
        return int(self.snap.details[d.open_file]["id"])  # type: ignore[call-overload]

    def _file_candidates(
        self, f: OpenFile, inode: Inode | None, kind: str
    ) -> list[FileDescriptor]:
        """Every descriptor on the other side of the holders of ``f`` (its
        ``inode`` of type ``kind``), perhaps with them (a pipe's); an eventfd's
        depend on the holder: _PER_PROCESS."""
        others: list[FileDescriptor] = []
        if kind in ("pipe", "fifo"):
            others = self._fds_by_inode.get(f.inode, [])
        elif kind == "socket":
            s = self.snap.sockets.get(inode.ino) if inode else None
            if s is not None and s.peer and (peer := self._ino_of.get(s.peer)):
                others = self._fds_by_inode.get(peer, [])
        if f.id not in self.snap.details and not f.path.startswith("/dev/pts/"):
            return others  # neither a pty nor an eventfd
        details = self.snap.details.get(f.id) or {}
        if details.get("kind") == "ptmx":
            others = self._by_tty[1].get(int(details["tty_index"]), [])  # type: ignore[call-overload]
        elif (n := pts_index(f.path)) is not None:
            others = self._by_tty[0].get(n, [])
        elif details.get("kind") == "eventfd" and "id" in details:
            return _PER_PROCESS
        return others

    def endpoint_label(self, d: FileDescriptor) -> str:
        """lsof +E's words: ``PID,COMM,FDmode`` for each other end."""
        ends = self.ends(d)
        return self.label(ends.of(d), ends.total) if ends is not None else ""

    def label(self, shown: list[FileDescriptor], total: int) -> str:
        """endpoint_label's words for the ends ``shown`` of ``total`` in all."""
        words = [f"{o.tgid},{self._comm(o.tgid)},{o.fd}{self._mode(o)}" for o in shown]
        if len(shown) == MAX_ENDPOINTS and (more := total - len(shown)) > 0:
            words.append(f"(+{more} more)")
        return " ".join(words)

    def _comm(self, tgid: int) -> str:
        t = self.snap.task(tgid)
        return t.comm if t else "?"

    def _mode(self, d: FileDescriptor) -> str:
        return _LETTER_OF_MODE.get(self.snap.open_files[d.open_file].flags & O_ACCMODE, "")

    def lock_label(self, d: FileDescriptor) -> str:
        """lsof's lock letters (r/R read, w/W write; capital: whole file), with the
        range of a partial lock and who waits."""
        return " ".join(lock_text(lock) for lock in self.locks(d))

    def description(self, d: FileDescriptor) -> str:
        """What the path alone does not say: socket addresses, anon inode details,
        the other ends."""
        parts = []
        if (s := self.socket(d)) is not None:
            parts.append(socket_name(s))
        details = self.snap.details.get(d.open_file)
        if details and (text := summary(dict(details))):
            parts.append(text)
        if ends := self.endpoint_label(d):
            parts.append("-> " + ends)
        return " ".join(parts)

    def fd_extras(self, d: FileDescriptor) -> dict[str, Any]:
        """JSON keys added to a descriptor, only those that have something to say."""
        out: dict[str, Any] = {}
        if (s := self.socket(d)) is not None:
            out["socket"] = socket_dict(s)
        if locks := self.locks(d):
            out["locks"] = [lock_dict(lock) for lock in locks]
        if details := self.snap.details.get(d.open_file):
            out["details"] = dict(details)
        if (others := self.ends(d)) is not None and (ends := others.of(d)):
            out["endpoints"] = [
                {"pid": o.tgid, "comm": self._comm(o.tgid), "fd": o.fd, "mode": self._mode(o)}
                for o in ends
            ]
            if len(ends) == MAX_ENDPOINTS:
                out["endpoints_total"] = others.total
        return out


def lock_text(lock: FileLock) -> str:
    """``w[5-14]``, ``W(flock)``, ``R<-1234`` (1234 waits for it)."""
    text = lock.letter
    if not lock.whole_file:
        text += f"[{lock.start}-{'EOF' if lock.end is None else lock.end}]"
    if lock.kind != "POSIX":
        text += f"({lock.kind.lower()})"
    if lock.waiters:
        text += "<-" + ",".join(map(str, lock.waiters))
    return text


def socket_dict(s: Socket) -> dict[str, Any]:
    return {
        "family": s.family,
        "type": s.type,
        "protocol": s.protocol,
        "local": s.local,
        "remote": s.remote,
        "state": s.state,
        "path": s.path,
        "peer_inode": s.peer,
        "interface": s.interface,
        "name": socket_name(s),
    }


def lock_dict(lock: FileLock) -> dict[str, Any]:
    return {
        "kind": lock.kind,
        "mode": lock.mode,
        "start": lock.start,
        "end": lock.end,
        "whole_file": lock.whole_file,
        "letter": lock.letter,
        "pid": lock.pid,
        "waiters": list(lock.waiters),
    }


def socket_name(s: Socket) -> str:
    """The socket as lsof's NAME column says it, e.g. ``127.0.0.1:40000->127.0.0.1:22
    (ESTABLISHED)``."""
    if s.family == "unix":
        text = s.path or "(unnamed)"
        return f"{text} type={s.type.upper()} ({s.state})"
    if s.family == "netlink":
        return f"netlink {s.protocol} {s.local}"
    if s.family == "packet":
        return f"packet {s.type} {s.protocol} on {s.interface}"
    addresses = s.local + (f"->{s.remote}" if s.remote else "")
    proto = s.protocol.upper() if s.protocol else "?"
    return f"{proto} {addresses} ({s.state})"


def summary(details: dict[str, Any]) -> str:
    """One short line for a text table, in lsof's words where lsof has them."""
    kind = details.get("kind")
    if kind == "epoll":
        fds = ",".join(str(fd) for fd in sorted(w["fd"] for w in details["watches"]))  # as lsof
        return f"[eventpoll:{fds}]" if fds else "[eventpoll]"
    if kind == "eventfd":
        ident = f":{details['id']}" if "id" in details else ""
        return f"[eventfd{ident}] count={details['count']}"
    if kind == "pidfd":
        return f"[pidfd:{details['pid']}]"
    if kind == "signalfd":
        return "[signalfd] mask=" + (",".join(details["signals"]) or "none")
    if kind == "timerfd":
        expiry = details["next_expiry_s"]
        when = f"next={expiry:.3f}s" if expiry else "disarmed"
        return f"[timerfd] clock={details['clock']} {when}"
    if kind == "inotify":
        watched = ",".join(w["inode"] for w in details["watches"])
        return f"[inotify] watches={watched or 'none'}"
    if kind == "ptmx":
        return f"->{details['pts']}"
    return ""


def pts_index(path: str) -> int | None:
    """N for /dev/pts/N."""
    head, _, tail = path.rpartition("/")
    return int(tail) if head == "/dev/pts" and tail.isdigit() else None
