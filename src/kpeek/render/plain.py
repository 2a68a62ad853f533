"""Plain column tables for the terminal: ps and files at thousands of rows.

The layout is the one rich drew for these views (box-less, left-aligned,
columns two spaces apart, every cell but the last padded to its column's
widest, no trailing blanks), built
with str.join instead of a renderable per cell: rich spent 94% of
``kpeek ps`` on 5,000 rows. Lines are never folded; cells are text the
caller already escaped (:func:`kpeek.textsafe.for_terminal`).
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterable, Sequence

from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up

if TYPE_CHECKING:  # the model costs 7 ms to import; oops never needs it
    from typing import TextIO

    from kpeek.model import Snapshot

_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def cell_width(s: str) -> int:
    """Terminal columns of ``s``: wide (CJK) characters take two, combining marks none."""
    if s.isascii():
        return len(s)
    width = 0
    for ch in s:
        if unicodedata.combining(ch) or ch in "\u200b\u200c\u200d\ufeff":
            continue
        width += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return width


def _pad(s: str, width: int) -> str:
    return s.ljust(width) if s.isascii() else s + " " * (width - cell_width(s))


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], out: TextIO) -> None:
    """Write a header line and one line per row; cells are str()-ed."""
    body = [[c if isinstance(c, str) else str(c) for c in row] for row in rows]
    widths = []
    for name, cells in zip(columns, zip(*body, strict=True) if body else [()] * len(columns),
                           strict=True):
        if "".join(cells).isascii():
            widths.append(max(len(name), *map(len, cells)) if cells else cell_width(name))
        else:
            widths.append(max(cell_width(name), *map(cell_width, cells)))
    # The last column is not padded: a long command line would pad every row.
    widths[-1:] = [0] * len(widths[-1:])
    line(out, "  ".join(_pad(c, w) for c, w in zip(columns, widths, strict=True)).rstrip(),
         _BOLD)
    out.write("".join(
        "  ".join([_pad(c, w) for c, w in zip(row, widths, strict=True)]).rstrip() + "\n"
        for row in body
    ))


def line(out: TextIO, s: str = "", style: str = "") -> None:
    """One line; bold or dim only where a terminal shows it."""
    if style and s and out.isatty():
        s = f"{style}{s}{_RESET}"
    out.write(s + "\n")


def bold(out: TextIO, s: str) -> None:
    line(out, s, _BOLD)


def footer(snap: Snapshot, out: TextIO | None = None) -> None:
    """Which source spoke, and what it could not see."""
    out = out or sys.stdout
    line(out, f"source: {snap.source}", _DIM)
    if snap.vanished:
        line(out, f"note: {snap.vanished} tasks or descriptors vanished while reading", _DIM)
    for note in snap.notes:
        line(out, for_terminal(f"note: {note}"), _DIM)
