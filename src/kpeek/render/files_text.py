"""``kpeek files`` as text tables at whole-system scale: the very lines that
``fd_rows`` and ``plain.table`` give (commands/files.py), with each open
file's cells and each endpoint list made once and every table line made
by one str.format.

tests/test_files_fast_paths.py holds the two against each other.
"""

from __future__ import annotations

from kpeek.filemodel import Mapped
from kpeek.model import FileDescriptor, ProcessFile, Snapshot, Task
from kpeek.render import plain
from kpeek.render.fdfacts import FdFacts, socket_name, summary
from kpeek.render.fileflags import access_mode, flag_names
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import TextIO

Row = tuple[str, ...]
_PER_HOLDER = True  # a marker: each holder has its own other ends (eventfds)


class FileCells:
    """The cells of descriptor rows, each open file's made once."""

    def __init__(self, snap: Snapshot, facts: FdFacts) -> None:
        self.snap = snap
        self.facts = facts
        # open file id -> ((FILE..FLAGS cells), (TYPE, INODE), PATH, the
        # description before the endpoints, the first candidates' keys, the
        # DETAILS cell of the other holders)
        self.of_file: dict[str, tuple[tuple[Row, Row], str, str, set | bool | None, str]] = {}
        self.pf_rows: dict[tuple[str, str, str], Row] = {}
        self.mapped: dict[int, list[Row]] = {}  # id(list of mapped files) -> mem rows
        self.locked = facts._locks_by_fd
        self.access: dict[int, tuple[str, str]] = {}  # f_flags -> ACCESS and FLAGS cells
        self.ends_of: dict[int, str] = {}  # id(Ends) -> its shared endpoint label

    def fd_row(self, d: FileDescriptor) -> Row:
        """fd_rows' row of one descriptor, as str cells."""
        known = self.of_file.get(d.open_file)
        if known is None:
            known = self.of_file[d.open_file] = self._file(d)
        cells, path, base, head, details = known
        if head is _PER_HOLDER or (head is not None and (d.tgid, d.fd) in head):
            details = _details(base, self.facts.endpoint_label(d))
        lock = self.facts.lock_label(d) if self.locked else ""
        return (
            str(d.fd),
            "cloexec" if d.cloexec else "",
            *cells[0],
            lock,
            *cells[1],
            path,
            details,
        )

    def _file(self, d: FileDescriptor) -> tuple[tuple[Row, Row], str, str, set | bool | None, str]:
        snap, facts = self.snap, self.facts
        f = snap.open_files[d.open_file]
        inode = snap.inodes.get(f.inode)
        kind = inode.type if inode else "?"
        sharers = len(snap.holders(d.open_file))
        access = self.access.get(f.flags)
        if access is None:
            access = self.access[f.flags] = (
                access_mode(f.flags).removeprefix("O_"),
                ",".join(n.removeprefix("O_") for n in flag_names(f.flags)),
            )
        cells = (
            (
                d.open_file,
                f"x{sharers}" if sharers > 1 else "",
                "" if f.refcount is None else str(f.refcount),
                str(f.pos),
                *access,
            ),
            (kind, f.inode),
        )
        parts = []
        if kind == "socket" and (s := facts.socket(d)) is not None:
            parts.append(socket_name(s))
        details = snap.details.get(d.open_file)
        if details and (text := summary(dict(details))):
            parts.append(text)
        head: set | bool | None = None
        ends = ""
        if facts.may_have_ends(f, kind) and (others := facts.ends(d)) is not None:
            if others.per_holder:  # an eventfd's: each holder has its own
                head = _PER_HOLDER
            else:
                head = others.heads
                ends = self.ends_of.get(id(others)) or self.ends_of.setdefault(
                    id(others), facts.label(others.shared, others.total)
                )
        base = " ".join(parts)
        return cells, for_terminal(f.path), base, head, _details(base, ends)

    def mapped_rows(self, mapped: list[Mapped]) -> list[Row]:
        """The mem rows of mapped files (path, inode id), made once per list
        (the forks of one program share theirs)."""
        rows = self.mapped.get(id(mapped))
        if rows is None:
            rows = self.mapped[id(mapped)] = [
                ("mem", *[""] * 9, inode, for_terminal(path), "") for path, inode in mapped
            ]
        return rows

    def pf_row(self, pf: ProcessFile) -> Row:
        key = (pf.kind, pf.path, pf.inode)
        row = self.pf_rows.get(key)
        if row is None:
            row = self.pf_rows[key] = (pf.kind, *[""] * 9, pf.inode, for_terminal(pf.path), "")
        return row


def _details(base: str, ends: str) -> str:
    """The DETAILS cell: FdFacts.description's words, escaped."""
    if ends:
        return for_terminal(f"{base} -> {ends}" if base else f"-> {ends}")
    return for_terminal(base)


def rows_of(cells: FileCells, t: Task, chosen: set[tuple[int, int]] | None) -> list[Row]:
    """fd_rows(snap, t, chosen) with every cell a str."""
    own, mapped = cells.facts.process_file_parts(t.tgid)
    rows = [*[cells.pf_row(pf) for pf in own], *cells.mapped_rows(mapped)]
    fds = cells.snap.fds_of(t.tgid)
    if chosen is not None:
        fds = [d for d in fds if (d.tgid, d.fd) in chosen]
    rows += [cells.fd_row(d) for d in fds]
    return rows


def table(
    columns: tuple[str, ...],
    rows: list[Row],
    out: TextIO,
    memo: dict[str, dict] | None = None,
    shared: int = 0,
) -> None:
    """plain.table(columns, rows, out) for str cells: one format per line
    where every cell is ASCII (a terminal column each), else plain.table.
    The lines of the first ``shared`` rows (rows that many tables repeat,
    such as the mapped files of forks of one program) are kept in ``memo``
    by format and row."""
    widths = []
    for name, cells in zip(columns, zip(*rows, strict=True), strict=True):
        if not "".join(cells).isascii() or not name.isascii():
            plain.table(columns, rows, out)
            return
        widths.append(max(len(name), *map(len, cells)))
    # The last column is not padded.
    fmt = "  ".join([*(f"{{:<{w}}}" for w in widths[:-1]), "{}"])
    plain.line(out, fmt.format(*columns).rstrip(), plain._BOLD)
    head = []
    if memo is not None and shared:
        known = memo.setdefault(fmt, {})
        for row in rows[:shared]:
            line = known.get(row)
            if line is None:
                line = known[row] = fmt.format(*row).rstrip() + "\n"
            head.append(line)
    else:
        shared = 0
    out.write("".join([*head, *[fmt.format(*row).rstrip() + "\n" for row in rows[shared:]]]))
