"""kpeek files [PID...]: descriptor tables, open files and inodes of processes."""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

from kpeek import jsonout
from kpeek.commands.common import (
    add_json,
    add_raw_pointers,
    add_source,
    raw_pointers_allowed,
    snapshot,
)
from kpeek.errors import NotSupported, UsageError
from kpeek.model import Snapshot, Task
from kpeek.render import cplayground, plain
from kpeek.render.fileflags import access_mode, flag_names
from kpeek.render.tables import files_document, namespace_id
from kpeek.textsafe import for_terminal

DIAGRAM_FORMATS = ("dot", "svg", "html")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("files", help="descriptor, open-file and inode tables", description=__doc__)
    p.add_argument("pid", type=int, nargs="*", help="processes to show (default: all)")
    p.add_argument("--container", action="store_true", help="group processes by PID namespace")
    p.add_argument(
        "--format",
        choices=("table", "cplayground"),
        default="table",
        help="cplayground: the teaching tool's /proc/cplayground line format",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="with --format cplayground: include the initial PID namespace",
    )
    for fmt in DIAGRAM_FORMATS:
        p.add_argument(f"--{fmt}", metavar="FILE", help=f"write a {fmt.upper()} diagram to FILE")
    add_source(p)
    add_json(p)
    add_raw_pointers(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raw = raw_pointers_allowed(args)
    snap = snapshot(args, pids=args.pid or None, threads=False)
    processes = sorted(snap.processes(), key=lambda t: t.pid)

    diagrams = [(fmt, getattr(args, fmt)) for fmt in DIAGRAM_FORMATS if getattr(args, fmt)]
    if diagrams:
        _write_diagrams(snap, [t.tgid for t in processes], diagrams)
        return 0
    if args.json:
        jsonout.emit("files", files_document(snap, processes, raw))
    elif args.format == "cplayground":
        initial = _own_pid_namespace()
        shown = processes if args.all else [t for t in processes if t.pidns != initial]
        sys.stdout.write(cplayground.render(snap, shown))
    elif args.container:
        _print_containers(snap, processes)
    else:
        _print_tables(snap, processes)
    return 0


def _own_pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


COLUMNS = (
    "FD", "CLOEXEC", "FILE", "SHARED", "REFS", "OFFSET", "ACCESS", "FLAGS", "TYPE", "INODE", "PATH",
)


def _print_tables(snap: Snapshot, processes: list[Task]) -> None:
    out = sys.stdout
    for t in processes:
        rows = fd_rows(snap, t)
        title = f"PID {t.pid} {t.comm}  (pid {t.ns_pid} in pidns {namespace_id(t.pidns)})"
        plain.bold(out, for_terminal(title))
        if rows:
            plain.table(COLUMNS, rows, out)
        else:
            plain.line(out, "  (no descriptors)")
        plain.line(out)
    plain.footer(snap, out)


def fd_rows(snap: Snapshot, t: Task) -> list[tuple[object, ...]]:
    """The text table's cells, one row per descriptor of ``t``, paths escaped."""
    rows = []
    for d in snap.fds_of(t.tgid):
        f = snap.open_files[d.open_file]
        inode = snap.inodes.get(f.inode)
        sharers = len(snap.holders(d.open_file))
        rows.append(
            (
                d.fd,
                "cloexec" if d.cloexec else "",
                d.open_file,
                f"x{sharers}" if sharers > 1 else "",
                "" if f.refcount is None else str(f.refcount),
                f.pos,
                access_mode(f.flags).removeprefix("O_"),
                ",".join(n.removeprefix("O_") for n in flag_names(f.flags)),
                inode.type if inode else "?",
                f.inode,
                for_terminal(f.path),
            )
        )
    return rows


def _print_containers(snap: Snapshot, processes: list[Task]) -> None:
    out = sys.stdout
    by_ns: dict[int, list[Task]] = defaultdict(list)
    for t in processes:
        by_ns[t.pidns].append(t)
    for ns, members in sorted(by_ns.items(), key=lambda kv: min(t.pid for t in kv[1])):
        rows = (
            (t.pid, t.ns_pid, t.ns_ppid, t.ns_pgid, len(snap.fds_of(t.tgid)), for_terminal(t.comm))
            for t in members
        )
        plain.line(out, f"PID namespace {namespace_id(ns)}: {len(members)} processes")
        plain.table(("PID", "NSPID", "NSPPID", "NSPGID", "FDS", "COMM"), rows, out)
        plain.line(out)
    plain.footer(snap, out)


def _write_diagrams(snap: Snapshot, tgids: list[int], targets: list[tuple[str, str]]) -> None:
    try:
        from kpeek.render.diagram import render_diagram
    except ImportError as e:
        raise NotSupported("diagrams are not available in this build") from e
    for fmt, path in targets:
        data = render_diagram(snap, tgids, fmt)
        try:
            Path(path).write_bytes(data)
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror}") from e
