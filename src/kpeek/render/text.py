"""Terminal output with rich for the views that style their lines (ps and files use
the plain column printer in plain.py): cells never interpret kernel names."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kpeek.textsafe import for_terminal


def console() -> Console:
    # Piped output keeps full lines instead of wrapping at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 240, highlight=False)


def name(value: str | None) -> Text:
    """An untrusted kernel name as inert text: escaped, never rich markup."""
    return Text(for_terminal(value or ""))


def table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None
) -> Table:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return t
