"""kpeek ps: every task with its ids, user, CPU and memory use, state, wait
channel and command line; ps's -o, --sort, --forest, -u and -p forms."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections import defaultdict

from kpeek.commands.common import (
    add_pid_lists,
    add_snapshot_outputs,
    add_users,
    is_live,
    namespace_number,
    nonempty,
    raw_pointers_allowed,
    snapshot,
)
from kpeek.errors import UsageError
from kpeek.model import STATE_NAMES, Task
from kpeek.render import plain, ps_columns
from kpeek.sources.proc_usage import with_usage
from kpeek.textsafe import for_terminal

COLUMN_HELP = ", ".join(ps_columns.COLUMNS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="processes and threads", description=__doc__)
    p.add_argument("pids", nargs="*", type=nonempty("pid list", blank=", \t"), metavar="PID",
                   help="only these processes (as -p)")
    p.add_argument("-t", "--threads", action="store_true", help="list threads too")
    add_pid_lists(p, "-p", "--pid", dest="pid", help="only these processes")
    p.add_argument("-c", "--comm", type=nonempty("command glob"),
                   help="only commands matching this glob, e.g. 'sort*'")
    add_users(p, "-u", "--user", dest="user", help="only tasks of these users")
    p.add_argument("-s", "--state", type=nonempty("state list"),
                   help="only these states, e.g. 'D' or 'DR'")
    p.add_argument("--ns", type=namespace_number,
                   help="only tasks in this PID namespace (its inode number, as shown)")
    p.add_argument(
        "-o",
        "--format",
        dest="columns",
        action="append",
        metavar="COLS",
        help=f"columns to show, comma separated: {COLUMN_HELP.replace('%', '%%')} "
        "(and ps's aliases: cmd, command, pcpu, pmem, tid...)",
    )
    p.add_argument(
        "--sort",
        metavar="[+|-]KEY[,...]",
        help="sort by these columns (- for descending), e.g. -%%cpu,pid",
    )
    p.add_argument("--forest", action="store_true", help="processes as a tree under parents")
    p.add_argument("--stacks", action="store_true", help="with each task, its kernel stack (root)")
    add_snapshot_outputs(p)
    p.set_defaults(func=run)


def _pid_list(args: argparse.Namespace) -> list[int] | None:
    pids: list[int] = []
    for item in [*args.pids, *args.pid]:
        for part in str(item).replace(",", " ").split():
            if not part.isdigit():
                raise UsageError(f"not a pid: {part!r}")
            pids.append(int(part))
    return pids or None


def select(tasks: list[Task], args: argparse.Namespace) -> list[Task]:
    if args.comm:
        tasks = [t for t in tasks if fnmatch.fnmatchcase(t.comm, args.comm)]
    if args.state:
        tasks = [t for t in tasks if t.state in args.state]
    if args.ns:
        tasks = [t for t in tasks if t.pidns == args.ns]
    if getattr(args, "user", None):
        from kpeek.commands.file_select import user_test

        wanted = user_test(args.user)
        tasks = [t for t in tasks if wanted(t)]
    return tasks


def _columns(args: argparse.Namespace, raw: bool) -> list[str]:
    if not args.columns:
        names = list(ps_columns.DEFAULT)
        if raw:
            names.insert(names.index("stat"), "addr")  # asked for raw pointers: show them
        return names
    names = []
    for spec in args.columns:
        for item in spec.split(","):
            name = ps_columns.resolve(item.partition("=")[0])
            if name is None:
                raise UsageError(f"unknown column {item!r}; choose from {COLUMN_HELP}")
            names.append(name)
    return names


def _sorted(tasks: list[Task], spec: str | None, clock: ps_columns.Clock) -> list[Task]:
    if not spec:
        return tasks
    keys = []
    for item in spec.split(","):
        descending = item.startswith("-")
        name = ps_columns.resolve(item.lstrip("+-"))
        if name is None:
            raise UsageError(f"unknown sort key {item!r}; choose from {COLUMN_HELP}")
        keys.append((ps_columns.COLUMNS[name].key, descending))
    for key, descending in reversed(keys):  # stable sorts, least significant first
        tasks = sorted(tasks, key=lambda t, key=key: key(t, clock), reverse=descending)
    return tasks


def _forest(tasks: list[Task]) -> list[tuple[Task, int]]:
    """(task, depth) in tree order: each process under its parent, as ps --forest."""
    shown = {t.pid for t in tasks}
    children: dict[int, list[Task]] = defaultdict(list)
    roots = []
    for t in tasks:
        parent = t.tgid if t.is_thread else t.ppid
        if parent in shown and parent != t.pid:
            children[parent].append(t)
        else:
            roots.append(t)
    out: list[tuple[Task, int]] = []
    stack = [(t, 0) for t in reversed(roots)]
    seen: set[int] = set()
    while stack:
        t, depth = stack.pop()
        if t.pid in seen:  # a pid reused mid-snapshot must not loop
            continue
        seen.add(t.pid)
        out.append((t, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(t.pid, [])))
    return out


def run(args: argparse.Namespace) -> int:
    if args.state and (bad := set(args.state) - set(STATE_NAMES)):
        raise UsageError(f"unknown state letter(s) {''.join(sorted(bad))!r}; use R S D T t Z I X P")
    raw = raw_pointers_allowed(args)
    names = _columns(args, raw)
    snap = snapshot(
        args, pids=_pid_list(args), threads=args.threads, files=False, stacks=args.stacks
    )
    clock = ps_columns.Clock.read()
    tasks = select(list(snap.tasks), args)
    if is_live(args):  # CPU, memory and command lines of the live system
        tasks = with_usage(tasks)
    tasks = _sorted(tasks, args.sort, clock)
    rows = _forest(tasks) if args.forest else [(t, 0) for t in tasks]
    if args.json:
        from kpeek import jsonout  # orjson and the file tables' renderers only for JSON
        from kpeek.render.tables import snapshot_meta, task_dict

        jsonout.emit(
            "ps",
            {
                **snapshot_meta(snap),
                "tasks": [
                    {**task_dict(t, raw), **ps_columns.usage_dict(t, clock), "depth": depth}
                    for t, depth in rows
                ],
            },
        )
        return 0
    table = task_rows([t for t, _ in rows], names, clock, raw, [d for _, d in rows])
    headers = [ps_columns.COLUMNS[n].header for n in names]
    out = sys.stdout
    if not args.stacks:
        plain.table(headers, table, out)
    else:
        # One small table per task, its stack under it: easy to read, easy to grep.
        for row, (t, _) in zip(table, rows, strict=True):
            plain.table(headers, [row], out)
            for frame in t.kernel_stack or ():
                plain.line(out, for_terminal(f"    {frame}"))
            plain.line(out)
    plain.footer(snap, out)
    return 0


COLUMNS = tuple(ps_columns.COLUMNS[n].header for n in ps_columns.DEFAULT)
_NAMES = ("args", "comm", "wchan")  # kernel-given text: escaped


def task_rows(
    tasks: list[Task],
    names: list[str] | tuple[str, ...] = ps_columns.DEFAULT,
    clock: ps_columns.Clock | None = None,
    raw: bool = False,
    depths: list[int] | None = None,
) -> list[tuple[object, ...]]:
    """The text table's cells, one row per task, names escaped; with ``depths``
    (--forest), the command indented under its parent as ps draws it."""
    clock = clock or ps_columns.Clock.read()
    tree_column = "args" if "args" in names else "comm"
    rows = []
    for i, t in enumerate(tasks):
        row: list[object] = []
        for n in names:
            value = ps_columns.COLUMNS[n].text(t, clock, raw)
            if n in _NAMES:
                value = for_terminal(value)
                depth = depths[i] if depths else 0
                if depth and n == tree_column:
                    value = "    " * (depth - 1) + " \\_ " + value
            row.append(value)
        rows.append(tuple(row))
    return rows
