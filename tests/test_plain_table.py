"""The plain column printer draws ps and files exactly as the rich tables did.

The reference is the rich renderer these views used before (box-less,
left-aligned, folded at 240 columns when piped), fed the same rows from a
snapshot of a real family whose names need escaping and double-width cells.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

from capabilities import require
from kpeek.commands.files import drop_empty, fd_rows
from kpeek.commands.ps import COLUMNS as TASK_COLUMNS
from kpeek.commands.ps import task_rows
from kpeek.render import plain
from kpeek.render.files_text import COLUMNS as FILE_COLUMNS
from kpeek.sources import take_snapshot
from scenarios import family

# Children named with tabs, escapes, CJK and combining marks, each holding
# files with such names, a pipe and a socket.
ODD_NAMES = """
import ctypes, tempfile
d = tempfile.mkdtemp(prefix="kpeek-plain-")
names = ["日本語", "tab\\there", "e\\u0301t\\u00e9", "esc\\x1b[31m", "back\\\\slash", "x" * 15]
children = []
for n in names:
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(15, n.encode()[:15], 0, 0, 0)
        keep = [os.open(os.path.join(d, n), os.O_RDWR | os.O_CREAT, 0o600), *os.pipe(),
                *socket.socketpair()]
        hold()
    children.append(pid)
time.sleep(0.3)
report(children=children, dir=d)
"""


def _rich(columns, rows) -> str:
    """The renderer ps and files used before (render/text.py's table())."""
    t = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*(Text(str(cell)) for cell in row))
    buf = io.StringIO()
    Console(file=buf, width=240, highlight=False).print(t)
    # rich pads the last column too; the plain printer leaves no trailing blanks
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def _plain(columns, rows) -> str:
    buf = io.StringIO()
    plain.table(columns, rows, buf)
    return buf.getvalue()


@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_ps_and_files_tables_match_the_rich_renderer(source):
    require("root")
    if source == "bpf":
        require("bpf")
    with family(ODD_NAMES) as fam:
        pids = [fam.pid, *fam.info["children"]]
        snap = take_snapshot(source, pids=pids, threads=False)
        tasks = sorted(snap.processes(), key=lambda t: t.pid)
        assert len(tasks) == len(pids)
        rows = task_rows(tasks)
        comm = TASK_COLUMNS.index("COMM")
        assert {r[comm] for r in rows} >= {"日本語", "tab\\there", "esc\\x1b[31m"}
        assert _plain(TASK_COLUMNS, rows) == _rich(TASK_COLUMNS, rows)
        wide = 0
        for t in tasks:
            columns, rows = drop_empty(FILE_COLUMNS, fd_rows(snap, t))  # as files prints
            # Without DETAILS (pipe endpoints): rich would fold those long lines at 240.
            if "DETAILS" in columns:
                i = columns.index("DETAILS")
                columns, rows = columns[:i], [r[:i] for r in rows]
            assert rows
            wide += any(not str(c).isascii() for r in rows for c in r)
            assert _plain(columns, rows) == _rich(columns, rows)
        assert wide >= 2
        # One row per table too (ps --stacks prints one per task).
        for row in task_rows(tasks):
            assert _plain(TASK_COLUMNS, [row]) == _rich(TASK_COLUMNS, [row])


def test_cell_width_counts_terminal_columns():
    assert plain.cell_width("abc") == 3
    assert plain.cell_width("日本") == 4
    assert plain.cell_width("e\u0301") == 1
    assert _plain(("A", "B"), []) == _rich(("A", "B"), [])
