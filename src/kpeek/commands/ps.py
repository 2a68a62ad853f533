"""kpeek ps: every task with its ids, namespace, state and wait channel."""

from __future__ import annotations

import argparse
import fnmatch
import sys

from kpeek import jsonout
from kpeek.commands.common import (
    add_json,
    add_raw_pointers,
    add_source,
    raw_pointers_allowed,
    snapshot,
)
from kpeek.errors import UsageError
from kpeek.model import STATE_NAMES, Task
from kpeek.render import plain
from kpeek.render.tables import namespace_id, snapshot_meta, task_dict
from kpeek.textsafe import for_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="processes and threads", description=__doc__)
    p.add_argument("-t", "--threads", action="store_true", help="list threads too")
    p.add_argument("-p", "--pid", type=int, action="append", help="only this process (repeatable)")
    p.add_argument("-c", "--comm", help="only commands matching this glob, e.g. 'sort*'")
    p.add_argument("-s", "--state", help="only these states, e.g. 'D' or 'DR'")
    p.add_argument("--ns", help="only tasks in this PID namespace (its inode number, as shown)")
    p.add_argument("--stacks", action="store_true", help="with each task, its kernel stack (root)")
    add_source(p)
    add_json(p)
    add_raw_pointers(p)
    p.set_defaults(func=run)


def select(tasks: list[Task], args: argparse.Namespace) -> list[Task]:
    if args.comm:
        tasks = [t for t in tasks if fnmatch.fnmatchcase(t.comm, args.comm)]
    if args.state:
        tasks = [t for t in tasks if t.state in args.state]
    if args.ns:
        tasks = [t for t in tasks if args.ns == namespace_id(t.pidns)]
    return tasks


def run(args: argparse.Namespace) -> int:
    if args.state and (bad := set(args.state) - set(STATE_NAMES)):
        raise UsageError(f"unknown state letter(s) {''.join(sorted(bad))!r}; use R S D T t Z I X P")
    raw = raw_pointers_allowed(args)
    snap = snapshot(
        args, pids=args.pid, threads=args.threads, files=False, stacks=args.stacks
    )
    tasks = select(list(snap.tasks), args)
    if args.json:
        jsonout.emit("ps", {**snapshot_meta(snap), "tasks": [task_dict(t, raw) for t in tasks]})
        return 0
    rows = task_rows(tasks)
    out = sys.stdout
    if not args.stacks:
        plain.table(COLUMNS, rows, out)
    else:
        # One small table per task, its stack under it: easy to read, easy to grep.
        for row, t in zip(rows, tasks, strict=True):
            plain.table(COLUMNS, [row], out)
            for frame in t.kernel_stack or ():
                plain.line(out, for_terminal(f"    {frame}"))
            plain.line(out)
    plain.footer(snap, out)
    return 0


COLUMNS = ("PID", "TGID", "PPID", "PGID", "SID", "NSPID", "PIDNS", "ST", "WCHAN", "COMM")


def task_rows(tasks: list[Task]) -> list[tuple[object, ...]]:
    """The text table's cells, one row per task, names escaped."""
    return [
        (
            t.pid,
            t.tgid,
            t.ppid,
            t.pgid,
            t.sid,
            t.ns_pid,
            namespace_id(t.pidns),
            t.state,
            for_terminal(t.wchan or "-"),
            for_terminal(t.comm),
        )
        for t in tasks
    ]
