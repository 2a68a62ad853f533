"""kpeek files [PID...]: descriptor tables, open files and inodes of processes."""

from __future__ import annotations

import argparse
import operator
import os
import sys
from collections import defaultdict

from kpeek import forked
from kpeek.commands import file_select
from kpeek.commands.common import (
    add_pid_lists,
    add_snapshot_outputs,
    add_users,
    cyclic_gc_off,
    is_live,
    nonempty,
    raw_pointers_allowed,
    snapshot,
)
from kpeek.errors import NotSupported, UsageError
from kpeek.model import ProcessFile, Snapshot, Task
from kpeek.render import files_text, plain
from kpeek.render.fdfacts import FdFacts
from kpeek.render.fileflags import access_mode, flag_names
from kpeek.render.tables import namespace_id
from kpeek.sources import fdfacts
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

DIAGRAM_FORMATS = ("dot", "svg", "html")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "files",
        help="descriptor, open-file and inode tables",
        description=__doc__,
        prefix_chars="-+",
        epilog=SELECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        nargs="*",
        type=nonempty("PID or PATH"),
        metavar="PID|PATH",
        help="processes to show (default: all); a path shows who has that file open",
    )
    add_pid_lists(p, "-p", dest="pid_lists", help="processes to show (lsof -p)")
    p.add_argument(
        "-i",
        dest="inet",
        nargs="?",
        const="",
        action="append",
        metavar="ADDR",
        help="internet sockets only, optionally [46][tcp|udp][@host][:port]",
    )
    add_users(p, "-u", dest="users", help="processes of these users (^ excludes)")
    p.add_argument(
        "-c",
        dest="comms",
        action="append",
        type=nonempty("command name"),
        metavar="COMM",
        help="processes whose command starts with COMM (or matches /REGEX/)",
    )
    p.add_argument("+D", dest="dirs", action="append", type=nonempty("directory"), metavar="DIR",
                   help="files at or under DIR")
    p.add_argument(
        "-t",
        dest="terse",
        action="store_true",
        help="print only the pids of matching processes (for scripts)",
    )
    p.add_argument(
        "+E",
        "--endpoints",
        dest="endpoints",
        action="store_true",
        help="look for the other ends of pipes, sockets, ptys and eventfds in every "
        "process, not only those shown (lsof +E)",
    )
    p.add_argument(
        "--no-extras",
        action="store_true",
        help="descriptors only: no cwd/rtd/txt/mem rows, sockets, locks or details",
    )
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
    add_snapshot_outputs(p)
    p.set_defaults(func=run)


SELECTION_HELP = """\
selections (all given must hold, as lsof -a):
  kpeek files -i :22            who uses port 22      -i tcp@127.0.0.1:8000-8100
  kpeek files /var/log/syslog   who has it open       kpeek files /mnt (a mount point: all on it)
  kpeek files +D /tmp -u alice  under /tmp, alice's   kpeek files -t -c sshd   pids only
A pid that does not exist or cannot be read is reported on stderr and the rest
are shown; the exit code is then 1 (as lsof).
"""


def run(args: argparse.Namespace) -> int:
    with cyclic_gc_off():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    raw = raw_pointers_allowed(args)
    pids, paths = _targets(args)
    file_tests = _file_tests(args, paths)
    failed = bool(paths) and len(file_tests) < len(paths) + len(args.inet or ()) + len(
        args.dirs or ()
    )
    usable = None
    if pids:  # a dump's pids are not this host's /proc: the walk says which it lacks
        usable = _readable(pids) if is_live(args) else list(dict.fromkeys(pids))
    if usable is not None and len(usable) < len(pids):
        failed = True
    if usable == []:
        return 1
    everyone = args.endpoints and usable is not None
    # lsof's cwd/rtd/txt/mem rows: read with a BPF snapshot (overlapping
    # its decoding) when every process it takes is shown with them.
    rows = not (args.no_extras or everyone or args.users or args.comms) and is_live(args)
    if usable is None and not args.no_extras and is_live(args):
        # The whole system's sockets will be described: the kernel formats
        # their tables on the other CPU while the snapshot is taken.
        from kpeek.sources import sockets

        sockets.read_ahead()
    snap = snapshot(args, pids=None if everyone else usable, threads=False,
                    **({"process_files": True} if rows else {}))
    processes = sorted(snap.processes(), key=lambda t: t.pid)
    if everyone:
        processes = [t for t in processes if t.tgid in set(usable or ())]
    processes = _select_processes(processes, args)
    if not args.no_extras and is_live(args):  # live only: read from /proc
        snap = fdfacts.enrich(snap, [t.tgid for t in processes])
    chosen = None
    if file_tests:
        chosen, others = _select_rows(snap, file_tests)
        snap = snap.derive(process_files=others)
        with_rows = {tgid for tgid, _ in chosen} | {f.tgid for f in others}
        processes = [t for t in processes if t.tgid in with_rows]
    status = 1 if failed else 0
    if args.terse:
        sys.stdout.write("".join(f"{t.pid}\n" for t in processes))
        return status

    diagrams = [(fmt, getattr(args, fmt)) for fmt in DIAGRAM_FORMATS if getattr(args, fmt)]
    if diagrams:
        _write_diagrams(snap, [t.tgid for t in processes], diagrams)
        return status
    if args.json:  # orjson and the JSON renderer only here
        from kpeek import jsonout
        from kpeek.render.files_json import files_json_chunks

        jsonout.write_document(files_json_chunks(snap, processes, raw, chosen))
    elif args.format == "cplayground":
        from kpeek.render import cplayground

        initial = _own_pid_namespace()
        shown = processes if args.all else [t for t in processes if t.pidns != initial]
        sys.stdout.write(cplayground.render(snap, shown))
    elif args.container:
        _print_containers(snap, processes)
    else:
        _print_tables(snap, processes, chosen)
    return status


def _targets(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    pids: list[int] = []
    paths: list[str] = []
    for item in args.target:
        (pids.append(int(item)) if item.isdigit() else paths.append(item))  # type: ignore[func-returns-value]
    for listed in args.pid_lists:
        for item in listed.split(","):
            if not item.isdigit():
                raise UsageError(f"-p: {item!r} is not a pid")
            pids.append(int(item))
    return pids, paths


def _readable(pids: list[int]) -> list[int]:
    """The pids whose descriptors can be read; each other one is told on stderr."""
    usable = []
    for pid in dict.fromkeys(pids):
        try:
            os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            _warn(f"no such process: {pid}")
            continue
        except PermissionError:
            why = "another user's (run kpeek as root)" if os.geteuid() else "refused even to root"
            _warn(f"cannot read the descriptors of pid {pid}: {why}")
            continue
        except OSError as e:
            _warn(f"cannot read pid {pid}: {e.strerror}")
            continue
        usable.append(pid)
    return usable


def _warn(message: str) -> None:
    sys.stderr.write(f"kpeek: {message}\n")


def _file_tests(args: argparse.Namespace, paths: list[str]) -> list[file_select.RowTest]:
    tests = [file_select.inet_test(spec) for spec in args.inet or ()]
    tests += [file_select.dir_test(d) for d in args.dirs or ()]
    for path in paths:
        test = file_select.path_test(path)
        if test is None:
            _warn(f"cannot examine {path}")
        else:
            tests.append(test)
    return tests


def _select_processes(processes: list[Task], args: argparse.Namespace) -> list[Task]:
    if args.users:
        wanted = file_select.user_test(args.users)
        processes = [t for t in processes if wanted(t)]
    if args.comms:
        matches = file_select.comm_test(args.comms)
        processes = [t for t in processes if matches(t)]
    return processes


def _select_rows(
    snap: Snapshot, tests: list[file_select.RowTest]
) -> tuple[set[tuple[int, int]], tuple[ProcessFile, ...]]:
    """The rows every test chooses: (tgid, fd) of descriptors, and cwd/rtd/txt/mem rows."""
    facts = FdFacts(snap)

    def chosen(row: file_select.Row) -> bool:
        return all(test(row) for test in tests)

    fds = set()
    for d in snap.fds:
        f = snap.open_files[d.open_file]
        if chosen(file_select.Row(f.path, f.inode, facts.socket(d))):
            fds.add((d.tgid, d.fd))
    others = tuple(f for f in snap.process_files if chosen(file_select.Row(f.path, f.inode)))
    return fds, others


def _own_pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _print_tables(
    snap: Snapshot, processes: list[Task], chosen: set[tuple[int, int]] | None = None
) -> None:
    out = sys.stdout
    cells = files_text.FileCells(snap, FdFacts(snap))

    def write(part: Sequence[Task], out: TextIO) -> None:
        lines: dict[tuple[str, object], str] = {}  # lines that the tables of forks repeat
        for t in part:
            title = f"PID {t.pid} {t.comm}  (pid {t.ns_pid} in pidns {namespace_id(t.pidns)})"
            plain.bold(out, for_terminal(title))
            if not files_text.process_table(cells, t, chosen, out, lines):
                plain.line(out, "  (no descriptors)")
            plain.line(out)

    # A whole system's tables are written by two processes at once (forked.py)
    forked.write_in_two(out, processes, [len(snap.fds_of(t.tgid)) for t in processes], write)
    plain.footer(snap, out)


_OPTIONAL = ("LOCK", "DETAILS")


def fd_rows(
    snap: Snapshot,
    t: Task,
    chosen: set[tuple[int, int]] | None = None,
    facts: FdFacts | None = None,
) -> list[tuple[object, ...]]:
    """The text table's cells: t's cwd/rtd/txt/mem rows, then one row per
    descriptor (those in ``chosen``, if given); names escaped."""
    facts = facts or FdFacts(snap)
    rows: list[tuple[object, ...]] = [
        (pf.kind, *[""] * 9, pf.inode, for_terminal(pf.path), "")
        for pf in facts.process_files(t.tgid)
    ]
    for d in snap.fds_of(t.tgid):
        if chosen is not None and (d.tgid, d.fd) not in chosen:
            continue
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
                facts.lock_label(d),
                inode.type if inode else "?",
                f.inode,
                for_terminal(f.path),
                for_terminal(facts.description(d)),
            )
        )
    return rows


def drop_empty(
    columns: tuple[str, ...], rows: list[tuple[object, ...]]
) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """Leave out LOCK and DETAILS when no row has one (most tables)."""
    drop = {
        i
        for i, c in enumerate(columns)
        if c in _OPTIONAL and not any(map(operator.itemgetter(i), rows))
    }
    keep = [i for i in range(len(columns)) if i not in drop]
    pick = operator.itemgetter(*keep)  # a tuple of those cells, in C
    return tuple(columns[i] for i in keep), [pick(r) for r in rows]


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
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror}") from e
