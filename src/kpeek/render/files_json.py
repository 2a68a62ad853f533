"""``kpeek files --json`` at whole-system scale: the very bytes that
``jsonout.encode`` gives for :func:`kpeek.render.tables.files_document`,
built from pieces encoded once and joined.

A whole-system document repeats itself: an open file's fields in every
descriptor that holds it, the same mapped libraries in every fork of one
program, the same few other ends of a pipe that a whole family shares. The
document is therefore assembled as bytes: each repeated piece is encoded
once by jsonout (so its bytes are exactly those the whole document would
hold: same escapes, same numbers) and reused. tests/test_files_fast_paths.py
holds the two against each other on real families.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import orjson

from kpeek import forked, jsonout
from kpeek.ids import pointer_shower
from kpeek.model import FileDescriptor, Inode, OpenFile, Snapshot, Task
from kpeek.render.fdfacts import MAX_ENDPOINTS, Ends, FdFacts, lock_dict, socket_dict
from kpeek.render.fileflags import access_mode, flag_names
from kpeek.render.tables import snapshot_meta, task_dict

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any


def _encode(obj: Any) -> bytes:
    """jsonout.encode(obj), skipping its checks where orjson's bytes need no
    fixing (ASCII, no float orjson writes unlike Python, no DEL). A copy:
    orjson's own bytes keep a 4 KiB buffer however short (pieces are kept)."""
    try:
        out = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # surrogates, a huge int: jsonout knows
        return bytes(memoryview(jsonout.encode(obj)))
    if not (out.isascii() and b"e-" not in out and b"0.0000" not in out and b"\x7f" not in out):
        out = jsonout.encode(obj)
    return bytes(memoryview(out))


def _word(s: str) -> bytes:
    """A string made of letters, digits, ':', '#', '-' and '_' (ids, inode ids,
    type names) as JSON: nothing in it is escaped."""
    raw = s.encode()
    return b'"%s"' % raw if raw.isalnum() or _WORD.fullmatch(raw) else _encode(s)


_WORD = re.compile(rb"[0-9A-Za-z:#_-]*")


def _string(s: str) -> bytes:
    """A str as JSON: as it is when nothing in it is escaped (printable
    ASCII but quote and backslash), else as jsonout writes it."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return b'"%s"' % s.encode()
    return _encode(s)


_BOOL = (b"false", b"true")
_PER_HOLDER = True  # a marker: each holder has its own other ends (eventfds)


def _address(shown: str | None) -> bytes:
    return b"null" if shown is None else _word(shown)


def _members(obj: dict[str, Any]) -> bytes:
    """The encoded members of a dict, without its braces (b"" for none)."""
    return _encode(obj)[1:-1]


class _Pieces:
    """Encoded pieces of one snapshot's document, each made once."""

    def __init__(self, snap: Snapshot, facts: FdFacts, raw_pointers: bool) -> None:
        self.snap = snap
        self.facts = facts
        self.raw = raw_pointers
        self.pointer = pointer_shower(raw_pointers)
        self.of_file: dict[str, tuple[bytes, set | bool | None]] = {}
        self.of_part: dict[str, tuple[bytes, bytes, bytes]] = {}
        self.words: dict[str, bytes] = {}
        self.entries: dict[str, bytes] = {}  # open file id -> its open_files entry
        self.comms: dict[int, bytes] = {}
        self.ends_of: dict[int, bytes] = {}  # id(Ends) -> its shared endpoints text
        self.holders_of = snap._fds_by_file
        self.end_entry: dict[tuple[int, int], bytes] = {}
        self.pf_rows: dict[tuple[str, str, str], bytes] = {}
        self.mapped: dict[int, bytes] = {}  # id(list of mapped files) -> their rows
        self.flag_words: dict[int, bytes] = {}
        self.locked = facts._locks_by_fd
        self.inode_ids: set[str] = set()  # those of the open files shown

    def fds(self, fds: list[FileDescriptor]) -> bytes:
        """The descriptors, each ``{**fd_dict(snap, d), **facts.fd_extras(d)}``,
        joined with commas."""
        of_file, locked, out = self.of_file, self.locked, []
        for d in fds:
            known = of_file.get(d.open_file)
            if known is None:  # the first holder seen
                tail = self._first(d)
            else:
                tail, head = known
                if (head is not None and (head is _PER_HOLDER or (d.tgid, d.fd) in head)) or (
                    locked and (d.tgid, d.fd) in locked
                ):
                    tail = self._own_tail(d, head, *self.of_part[d.open_file])
            out.append(b'{"fd":%d,"cloexec":%s,%s' % (d.fd, _BOOL[d.cloexec], tail))
        return b",".join(out)

    def _first(self, d: FileDescriptor) -> bytes:
        """d's entry after its cloexec, d the first holder of its open file
        seen: the file's pieces are made, and kept for the other holders
        (most open files have none: nothing is kept for those)."""
        part, extras, others, head = self._file(d)
        file_id = d.open_file
        alike = others is not None and not others.per_holder  # the same ends for most holders
        ends = b""
        if len(self.holders_of[file_id]) > 1:
            ends = self._shared_ends(others) if alike else b""  # type: ignore[arg-type]
            self.of_file[file_id] = (b"%s%s%s}" % (part, extras, ends), head)
            if head is not None or self.locked:  # kept only for _own_tail
                self.of_part[file_id] = (part, extras, ends)
        elif alike and (d.tgid, d.fd) not in head:  # type: ignore[operator]
            ends = self._shared_ends(others)  # type: ignore[arg-type]
        return self._own_tail(d, head, part, extras, ends)

    def _own_tail(
        self, d: FileDescriptor, head: set | bool | None, part: bytes, extras: bytes, ends: bytes
    ) -> bytes:
        """d's entry after its cloexec: its open file's (``part``, ``extras``,
        ``ends``), with d's own endpoint list (when d is among the first
        candidates) and locks."""
        if head is _PER_HOLDER or (head is not None and (d.tgid, d.fd) in head):
            others = self.facts.ends(d)
            ends = self._ends_text(others.of(d), others.total) if others else b""
        if self.locked and (d.tgid, d.fd) in self.locked:
            extras = self._extras(d, self.facts.locks(d))
        return b"%s%s%s}" % (part, extras, ends)

    def flags(self, flags: int) -> bytes:
        """``"flags":N,"access":...,"flag_names":[...]``"""
        got = self.flag_words.get(flags)
        if got is None:
            got = self.flag_words[flags] = _members(
                {"flags": flags, "access": access_mode(flags), "flag_names": flag_names(flags)}
            )
        return got

    def _file(self, d: FileDescriptor) -> tuple[bytes, bytes, Ends | None, set | bool | None]:
        """The pieces of d's open file in a descriptor's entry: fd_dict's part
        from the open file, fd_extras' socket and details, the other ends of
        its holders and the keys of the holders with their own list (or
        _PER_HOLDER, or None). Its open_file_dict entry is made here too,
        from the same pieces."""
        snap = self.snap
        file_id = d.open_file
        f = snap.open_files[file_id]
        inode = snap.inodes.get(f.inode)
        kind = inode.type if inode else "unknown"
        holders = self.holders_of[file_id]
        id_b, inode_b, path_b, flags_b = self._entry(file_id, f, holders)
        kind_b = self.words.get(kind) or self.word(kind)
        part = b'"open_file":%s,"pos":%d,%s,"type":%s,"path":%s,"inode":%s,"sharers":%d' % (
            id_b, f.pos, flags_b, kind_b, path_b, inode_b, len(holders),
        )  # fmt: skip
        extras = b""
        head = others = None
        if kind == "socket" or file_id in snap.details:
            extras = self._extras(d, [])
        # Other ends: of pipes, FIFOs, sockets, ptys and eventfds only (FdFacts)
        if self.facts.may_have_ends(f, kind) and (others := self.facts.ends(d)) is not None:
            head = _PER_HOLDER if others.per_holder else others.heads  # an eventfd's: per holder
        return part, extras, others, head

    def _entry(
        self, file_id: str, f: OpenFile, holders: list[FileDescriptor]
    ) -> tuple[bytes, bytes, bytes, bytes]:
        """Make the open_files entry of ``f``; its id, inode, path and flags
        pieces for the descriptors' entries."""
        # The cached pieces looked up here, not through a method each: this
        # runs for every open file of the system.
        id_raw = file_id.encode()
        id_b = b'"%s"' % id_raw if id_raw.isalnum() else _word(file_id)  # a keyed hash's hex
        self.inode_ids.add(f.inode)
        # Neither cached: most open files have an inode and a path of their own.
        raw = f.inode.encode()
        inode_b = b'"%s"' % raw if raw.replace(b":", b"").isdigit() else _word(f.inode)
        path_b = _string(f.path)
        flags_b = self.flag_words.get(f.flags) or self.flags(f.flags)
        refcount, address = f.refcount, f.address
        if address is None:
            address_b = b"null"
        elif self.raw:
            address_b = b'"%s"' % self.pointer(address).encode()  # "0x" and hex digits
        else:
            address_b = b'"#%s"' % id_raw  # show_pointer's text: "#" and the id (see OpenFile)
        self.entries[file_id] = (
            b'{"id":%s,"inode":%s,"path":%s,"pos":%d,%s,"refcount":%s,"holders":[%s],"address":%s}'
            % (
                id_b, inode_b, path_b, f.pos, flags_b,
                b"null" if refcount is None else b"%d" % refcount,
                b",".join([b"[%d,%d]" % (h.tgid, h.fd) for h in holders]),
                address_b,
            )
        )  # fmt: skip
        return id_b, inode_b, path_b, flags_b

    def add_entries(self, fds: Iterable[FileDescriptor]) -> None:
        """Make the open_files entries of ``fds``' files that have none yet
        (their descriptors were shown by a forked child)."""
        entries, open_files = self.entries, self.snap.open_files
        for d in fds:
            if d.open_file not in entries:
                self._entry(d.open_file, open_files[d.open_file], self.holders_of[d.open_file])

    def task(self, t: Task) -> bytes:
        """task_dict's entry of ``t`` without its closing brace."""
        try:
            return self._task(t)
        except TypeError:  # a field the model types as int is not (a source's slip)
            return _encode(task_dict(t, self.raw))[:-1]

    def _task(self, t: Task) -> bytes:
        words, word, pointer = self.words, self.word, self.pointer
        return (
            b'{"pid":%d,"tgid":%d,"ppid":%d,"pgid":%d,"sid":%d,"comm":%s,"state":%s,'
            b'"state_name":%s,"wchan":%s,"uid":%d,"pidns":%d,"ns":{"pid":%d,"tgid":%d,'
            b'"ppid":%d,"pgid":%d,"sid":%d},"is_thread":%s,"kernel_stack":%s,"blocker":%s,'
            b'"address":%s'
        ) % (
            t.pid, t.tgid, t.ppid, t.pgid, t.sid, _string(t.comm),
            words.get(t.state) or word(t.state), words.get(t.state_name) or word(t.state_name),
            b"null" if t.wchan is None else _string(t.wchan), t.uid, t.pidns,
            t.ns_pid, t.ns_tgid, t.ns_ppid, t.ns_pgid, t.ns_sid, _BOOL[t.is_thread],
            b"null" if t.kernel_stack is None else _encode(list(t.kernel_stack)),
            b'"%s"' % pointer(t.blocker).encode() if t.blocker else b"null",
            b"null" if t.address is None else b'"%s"' % pointer(t.address).encode(),
        )  # fmt: skip

    def inode(self, i: Inode) -> bytes:
        """inode_dict's entry of ``i``."""
        raw = i.id.encode()
        return b'{"id":%s,"type":%s,"nlink":%s,"size":%s,"address":%s}' % (
            b'"%s"' % raw if raw.replace(b":", b"").isdigit() else _word(i.id),
            self.words.get(i.type) or self.word(i.type),
            b"null" if i.nlink is None else b"%d" % i.nlink,
            b"null" if i.size is None else b"%d" % i.size,
            b"null" if i.address is None else b'"%s"' % self.pointer(i.address).encode(),
        )

    def word(self, s: str) -> bytes:
        got = self.words.get(s)
        if got is None:
            got = self.words[s] = _word(s)
        return got

    def _extras(self, d: FileDescriptor, locks: list) -> bytes:
        """fd_extras' socket, locks and details keys."""
        out: dict[str, Any] = {}
        if (s := self.facts.socket(d)) is not None:
            out["socket"] = socket_dict(s)
        if locks:
            out["locks"] = [lock_dict(lock) for lock in locks]
        if details := self.snap.details.get(d.open_file):
            out["details"] = dict(details)
        return b"," + _members(out) if out else b""

    def _shared_ends(self, others: Ends) -> bytes:
        """The endpoints text of every holder but those among the first
        candidates, made once per candidates list."""
        text = self.ends_of.get(id(others))
        if text is None:
            text = self.ends_of[id(others)] = self._ends_text(others.shared, others.total)
        return text

    def _end_entry(self, o: FileDescriptor) -> bytes:
        key = (o.tgid, o.fd)
        got = self.end_entry.get(key)
        if got is None:
            comm = self.comms.get(o.tgid)
            if comm is None:
                comm = self.comms[o.tgid] = _string(self.facts._comm(o.tgid))
            got = self.end_entry[key] = b'{"pid":%d,"comm":%s,"fd":%d,"mode":"%s"}' % (
                o.tgid, comm, o.fd, self.facts._mode(o).encode(),
            )  # fmt: skip
        return got

    def _ends_text(self, ends: list[FileDescriptor], total: int) -> bytes:
        """fd_extras' endpoints and endpoints_total keys (b"" when none)."""
        if not ends:
            return b""
        text = b',"endpoints":[' + b",".join([self._end_entry(o) for o in ends]) + b"]"
        if len(ends) == MAX_ENDPOINTS:
            text += b',"endpoints_total":%d' % total
        return text

    def process_files(self, tgid: int) -> bytes:
        """The process_files entries of one process: its own rows, then its
        mem rows, encoded once per list of mapped files (forks share it)."""
        own, mapped = self.facts.process_file_parts(tgid)
        cache = self.pf_rows
        parts = []
        for pf in own:
            key = (pf.kind, pf.path, pf.inode)
            got = cache.get(key)
            if got is None:
                got = cache[key] = _encode({"kind": pf.kind, "path": pf.path, "inode": pf.inode})
            parts.append(got)
        if mapped:
            got = self.mapped.get(id(mapped))
            if got is None:
                got = self.mapped[id(mapped)] = b",".join(
                    [_encode({"kind": "mem", "path": path, "inode": ino}) for path, ino in mapped]
                )
            parts.append(got)
        return b",".join(parts)


def files_json(
    snap: Snapshot,
    processes: list[Task],
    raw_pointers: bool = False,
    chosen: set[tuple[int, int]] | None = None,
) -> bytes:
    """``jsonout.encode({"schema": "kpeek.files/1", **files_document(...)})``."""
    return b"".join(files_json_chunks(snap, processes, raw_pointers, chosen))


def files_json_chunks(
    snap: Snapshot,
    processes: list[Task],
    raw_pointers: bool = False,
    chosen: set[tuple[int, int]] | None = None,
) -> Iterator[bytes]:
    """:func:`files_json` in pieces, to be written as they come (a whole-system
    document is tens of MB: it is never held whole)."""
    facts = FdFacts(snap)
    pieces = _Pieces(snap, facts, raw_pointers)
    head = _encode({"schema": f"kpeek.files/{jsonout.SCHEMA_VERSION}", **snapshot_meta(snap)})
    yield head[:-1] + b',"processes":['
    shown = [_shown_fds(snap, t, chosen) for t in processes]
    split, rest = _forked_rest(pieces, processes, shown)
    try:
        yield from _process_entries(pieces, processes[:split], shown[:split], b"")
        made, rest = (rest.pieces() if rest else None), None
    finally:
        if rest is not None:
            rest.cancel()
    yield from made if made is not None else _rest(pieces, processes, shown, split)


def _rest(
    pieces: _Pieces, processes: list[Task], shown: list[list[FileDescriptor]], split: int
) -> Iterator[bytes]:
    """The document after the entries of the first ``split`` processes."""
    yield from _process_entries(pieces, processes[split:], shown[split:], b"," if split else b"")
    # The open files of the descriptors shown, each entry made with its first one.
    entries = pieces.entries
    file_ids = sorted(entries)
    yield b'],"open_files":['
    for start in range(0, len(file_ids), 1000):
        chunk = b",".join([entries[i] for i in file_ids[start : start + 1000]])
        yield chunk if start == 0 else b"," + chunk
    yield b'],"inodes":['
    inodes = [pieces.snap.inodes[n] for n in sorted(pieces.inode_ids) if n in pieces.snap.inodes]
    for start in range(0, len(inodes), 1000):
        chunk = b",".join([pieces.inode(i) for i in inodes[start : start + 1000]])
        yield chunk if start == 0 else b"," + chunk
    yield b"]}"


def _shown_fds(
    snap: Snapshot, t: Task, chosen: set[tuple[int, int]] | None
) -> list[FileDescriptor]:
    fds = snap.fds_of(t.tgid)
    return fds if chosen is None else [d for d in fds if (d.tgid, d.fd) in chosen]


def _process_entries(
    pieces: _Pieces, processes: list[Task], shown: list[list[FileDescriptor]], sep: bytes
) -> Iterator[bytes]:
    """The "processes" entries of ``processes``: the first after ``sep``
    (b"" at the start of the list), the others after a comma."""
    for t, fds in zip(processes, shown, strict=True):
        yield b"".join(
            [
                sep,
                pieces.task(t),
                b',"fds":[',
                pieces.fds(fds),
                b'],"process_files":[',
                pieces.process_files(t.tgid),
                b"]}",
            ]
        )
        sep = b","


def _forked_rest(
    pieces: _Pieces, processes: list[Task], shown: list[list[FileDescriptor]]
) -> tuple[int, forked.InChild | None]:
    """How many processes' entries this process makes, and the child making
    the rest of the document (None: no child, all is made here). The child
    also makes every open file's and inode's entry: it takes fewer
    descriptors, so that the two take about as long."""
    weights = [len(fds) for fds in shown]
    if not forked.worth_forking(sum(weights)):
        return len(processes), None
    split = forked.split_point(weights, _OWN_SHARE)
    if split == len(processes):
        return split, None
    return split, forked.InChild(_rest_in_child, pieces, processes, shown, split, raw=True)


def _rest_in_child(
    pieces: _Pieces, processes: list[Task], shown: list[list[FileDescriptor]], split: int
) -> Iterator[bytes]:
    """_rest, made by a child forked before this process made the first
    ``split`` processes' entries: the open_files entries of their files too."""
    for fds in shown[:split]:
        pieces.add_entries(fds)
    return _rest(pieces, processes, shown, split)


_OWN_SHARE = 0.65  # of the descriptors, whose entries this process makes (_forked_rest)
