"""``kpeek files`` as text tables at whole-system scale: the very lines that
``fd_rows`` and ``plain.table`` give (commands/files.py), with each open
file's cells and each endpoint list made once and every table line made
by one str.format.

tests/test_files_fast_paths.py holds the two against each other.
"""

from __future__ import annotations

from operator import itemgetter

from kpeek.filemodel import Mapped
from kpeek.model import FileDescriptor, ProcessFile, Snapshot, Task
from kpeek.render import plain
from kpeek.render.fdfacts import FdFacts, socket_name, summary
from kpeek.render.fileflags import access_mode, flag_names
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from collections.abc import Callable
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
        self.blocks: dict[tuple[int, tuple[bool, bool]], Block] = {}
        self.locked = facts._locks_by_fd
        self.access: dict[int, tuple[str, str]] = {}  # f_flags -> ACCESS and FLAGS cells
        self.ends_of: dict[int, str] = {}  # id(Ends) -> its shared endpoint label

    def fd_row(self, d: FileDescriptor) -> Row:
        """fd_rows' row of one descriptor, as str cells."""
        known = self.of_file.get(d.open_file)
        if known is None:
            known = self._file(d)
            if len(self.snap.holders(d.open_file)) > 1:  # kept for the other holders
                self.of_file[d.open_file] = known
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
                # (the label of the holders not among the first candidates: a
                # pipe's own ends in one process have none)
                if any((h.tgid, h.fd) not in head for h in snap.holders(d.open_file)):
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

    def block(
        self, mapped: list[Mapped], layout: tuple[bool, bool], pick: Callable[[Row], Row]
    ) -> Block:
        """The mem rows of mapped files as a Block of ``layout``'s cells, made once
        per list (the forks of one program share theirs)."""
        key = (id(mapped), layout)
        block = self.blocks.get(key)
        if block is None:
            block = self.blocks[key] = Block([pick(row) for row in self.mapped_rows(mapped)])
        return block

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


def process_table(
    cells: FileCells,
    t: Task,
    chosen: set[tuple[int, int]] | None,
    out: TextIO,
    memo: dict[tuple[str, object], str],
) -> bool:
    """Write t's table as ``plain.table(*drop_empty(COLUMNS, fd_rows(snap, t,
    chosen)), out)`` does (commands/files.py): its cwd/rtd/txt/mem rows, then a
    row per descriptor (those in ``chosen``, if given), LOCK and DETAILS only
    where a row has one. False, and nothing written, when t has no row.
    ``memo`` keeps lines that many tables repeat (the mapped files of the
    forks of one program) across the calls of one run."""
    own, mapped = cells.facts.process_file_parts(t.tgid)
    fds = cells.snap.fds_of(t.tgid)
    if chosen is not None:
        fds = [d for d in fds if (d.tgid, d.fd) in chosen]
    fd_rows = [cells.fd_row(d) for d in fds]
    if not (own or mapped or fd_rows):
        return False
    # Only descriptor rows have locks and details.
    layout = (any(r[_LOCK] for r in fd_rows), any(r[_DETAILS] for r in fd_rows))
    columns, pick = _LAYOUTS.get(layout) or _LAYOUTS.setdefault(layout, _layout(*layout))
    head = [pick(cells.pf_row(pf)) for pf in own]
    body = [pick(r) for r in fd_rows]
    block = cells.block(mapped, layout, pick) if mapped else None
    _write(columns, head, block, body, out, memo)
    return True


# The columns of a process's table; FD holds lsof's cwd/rtd/txt/mem for the
# rows that are not descriptors.
COLUMNS = (
    "FD", "CLOEXEC", "FILE", "SHARED", "REFS", "OFFSET", "ACCESS", "FLAGS", "LOCK", "TYPE",
    "INODE", "PATH", "DETAILS",
)  # fmt: skip
_LOCK, _DETAILS = COLUMNS.index("LOCK"), COLUMNS.index("DETAILS")
# (LOCK kept, DETAILS kept) -> the columns and a picker of a row's cells for them
_LAYOUTS: dict[tuple[bool, bool], tuple[tuple[str, ...], Callable[[Row], Row]]] = {}


def _layout(lock: bool, details: bool) -> tuple[tuple[str, ...], Callable[[Row], Row]]:
    keep = [i for i in range(len(COLUMNS)) if (lock or i != _LOCK) and (details or i != _DETAILS)]
    return tuple(COLUMNS[i] for i in keep), itemgetter(*keep)  # a tuple of those cells, in C


class Block:
    """Rows that many tables show alike (the mem rows of one list of mapped
    files), their cells' widths and whether every cell is ASCII, made once."""

    __slots__ = ("ascii", "rows", "widths")

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        columns = list(zip(*rows, strict=True))
        self.ascii = all("".join(c).isascii() for c in columns)
        self.widths = [max(map(len, c)) for c in columns]


def _write(
    columns: tuple[str, ...],
    head: list[Row],
    block: Block | None,
    body: list[Row],
    out: TextIO,
    memo: dict[tuple[str, object], str],
) -> None:
    """plain.table(columns, head + block's rows + body, out) for str cells: one
    format per line where every cell is ASCII (a terminal column each), else
    plain.table itself."""
    cells = list(zip(*[*head, *body], strict=True)) or [()] * len(columns)  # by column
    if not (
        "".join(map("".join, cells)).isascii()
        and "".join(columns).isascii()
        and (block is None or block.ascii)
    ):
        plain.table(columns, [*head, *(block.rows if block else ()), *body], out)
        return
    widths = [max([len(name), *map(len, c)]) for name, c in zip(columns, cells, strict=True)]
    if block is not None:
        widths = [max(w, b) for w, b in zip(widths, block.widths, strict=True)]
    # The last column is not padded.
    fmt = "  ".join([*(f"{{:<{w}}}" for w in widths[:-1]), "{}"])
    plain.line(out, fmt.format(*columns).rstrip(), plain._BOLD)
    lines = []
    for row in head:  # cwd, rtd, txt: alike in the forks of one program
        line = memo.get((fmt, row))
        if line is None:
            line = memo[fmt, row] = fmt.format(*row).rstrip() + "\n"
        lines.append(line)
    if block is not None:
        text = memo.get((fmt, id(block)))
        if text is None:
            text = memo[fmt, id(block)] = "".join(
                [fmt.format(*row).rstrip() + "\n" for row in block.rows]
            )
        lines.append(text)
    out.write("".join([*lines, *[fmt.format(*row).rstrip() + "\n" for row in body]]))
