"""kpeek oops [FILE...|-]: read kernel crash reports (oops, BUG, WARNING, KASAN, hangs ...).

For each report in the log: a stable title (syzbot's conventions), its
kind, the guilty function, the faulting address and what it suggests,
taint flags explained, the call trace with unreliable frames marked, and
the Code: bytes disassembled around the faulting instruction. Without FILE
the live kernel log (/dev/kmsg) is read, without waiting for new messages.
Several FILEs are read one after the other, each on its own (its own
report numbers and line numbers) under a "==> FILE <==" heading; with
--json, one document whose "files" list holds each file's document. A FILE
that cannot be read is said on stderr, the others are still shown, and
kpeek exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from kpeek.commands.common import add_json, add_raw_pointers, raw_pointers_allowed
from kpeek.errors import EXIT_USAGE, UsageError
from kpeek.render import oops as view
from kpeek.reports.parse import ParseResult, parse_log
from kpeek.reports.stream import open_log, parse_stream
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up

if TYPE_CHECKING:
    from typing import Any

    from kpeek.reports import Report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oops", help="read kernel crash reports from a log or the live kernel",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="log files (console capture, dmesg, journal); '-' for stdin;"
                        " default: the live kernel log /dev/kmsg")
    p.add_argument("--summary", action="store_true",
                   help="only the table of reports, no details")
    p.add_argument("--report", type=int, metavar="N",
                   help="show only report N (as numbered in the summary)")
    p.add_argument("--full", action="store_true",
                   help="show every call-trace frame and the report's lines")
    add_json(p)
    add_raw_pointers(p)
    p.set_defaults(func=run)


def read_log(path: str | None) -> tuple[ParseResult, str, bool]:
    """(reports, source name, live) for a FILE argument. A file or stdin is read
    as a stream in bounded memory. Raises UsageError, NotPermitted."""
    if path is None or (path != "-" and os.path.realpath(path) == "/dev/kmsg"):
        # The live log: read what is there now, never wait for new records.
        from kpeek.reports.kmsg import read_kmsg

        return parse_log(_symbolize_live(read_kmsg())), "/dev/kmsg", True
    if path == "-":
        return parse_stream(sys.stdin.buffer, "stdin"), "stdin", False
    with open_log(path) as f:
        return parse_stream(f, path), path, False


def _symbolize_live(text: str) -> str:
    """Add names to bare addresses with the running kernel's kallsyms, if it is readable."""
    try:
        from kpeek.kernel.symbols import load_kallsyms
        from kpeek.reports.symbolize import symbolize_log

        syms = load_kallsyms()
    except Exception:  # no kallsyms (or not permitted): the log stays as it is
        return text
    if not len(syms):
        return text
    return symbolize_log(text, syms.symbolize)


def dump_log(core: str, args: argparse.Namespace) -> tuple[str, str, bool]:
    """The log inside the dump given with -c, as dmesg would print it, symbolized
    with the dump's own symbols."""
    from kpeek.kernel.printk import format_record
    from kpeek.kernel.printk import read_log as read_ring
    from kpeek.reports.symbolize import symbolize_log
    from kpeek.targets import open_kernel

    kernel = open_kernel(args, "kpeek oops")
    text = "\n".join(format_record(r) for r in read_ring(kernel)) + "\n"
    if kernel.symbols is not None:
        text = symbolize_log(text, kernel.symbols.symbolize)
    return text, f"the log in {core}", False


def run(args: argparse.Namespace) -> int:
    raw = raw_pointers_allowed(args)
    core = getattr(args, "core", None)  # a dump given with -c
    files: list[str | None] = list(args.files) or [None]
    if len(files) > 1 and args.report is not None:
        raise UsageError("--report N picks a report of one log; give one FILE")
    if len(files) > 1 and files.count("-") > 0:
        raise UsageError("'-' (stdin) cannot be read along with other files")
    if len(files) == 1:
        file = files[0]
        if core is not None and file is None:
            log, source, live = dump_log(core, args)
            parsed = parse_log(log)
        else:
            parsed, source, live = read_log(file)
        _show(args, parsed, source, live, raw)
        return 0
    # Several logs: each on its own, a bad one said on stderr and skipped.
    failed = False
    documents: list[dict[str, Any]] = []
    out = view.Lines(sys.stdout)
    for i, file in enumerate(files):
        try:
            parsed, source, live = read_log(file)
        except UsageError as e:
            out.flush()
            sys.stdout.flush()
            print(f"kpeek: {e}", file=sys.stderr)
            failed = True
            continue
        if args.json:
            documents.append(_document(args, parsed, source, raw or not live))
            continue
        if i:
            out.add()
        out.add(f"==> {source} <==", "bold")
        _text(args, out, parsed, source, raw or not live)
        out.flush()
    if args.json:
        from kpeek import jsonout

        jsonout.emit("oops", {"count": sum(d["count"] for d in documents),
                              "files": documents})
    return EXIT_USAGE if failed else 0


def _chosen(args: argparse.Namespace, parsed: ParseResult) -> list[tuple[int, Report]]:
    reports = parsed.reports
    if args.report is None:
        return list(enumerate(reports, 1))
    if not 1 <= args.report <= len(reports):
        raise UsageError(f"--report {args.report}: the log has {len(reports)} report(s)")
    return [(args.report, reports[args.report - 1])]


def _show(args: argparse.Namespace, parsed: ParseResult, source: str, live: bool,
          raw: bool) -> None:
    # A log file is the user's own data; pointers from the live kernel are secrets.
    show_raw = raw or not live
    if args.json:
        from kpeek import jsonout

        jsonout.emit("oops", _document(args, parsed, source, show_raw))
        return
    out = view.Lines(sys.stdout)
    _text(args, out, parsed, source, show_raw)
    out.flush()


def _document(args: argparse.Namespace, parsed: ParseResult, source: str,
              show_raw: bool) -> dict[str, Any]:
    return {
        "source": source,
        "count": len(parsed.reports),
        "truncated": parsed.truncated,
        "reports": [view.report_json(r, n, show_raw) for n, r in _chosen(args, parsed)],
    }


def _text(args: argparse.Namespace, out: view.Lines, parsed: ParseResult, source: str,
          show_raw: bool) -> None:
    reports = parsed.reports
    chosen = _chosen(args, parsed)
    if parsed.truncated:
        out.add(for_terminal(f"note: {source} holds more than kpeek parses in one go; only"
                             f" the first {len(reports)} report(s) are shown"), "yellow")
    if not reports:
        out.add(for_terminal(f"no kernel report in {source} (no oops, BUG, WARNING, KASAN,"
                             " hang, panic or lockdep report)"))
        return
    if (len(reports) > 1 or args.summary) and args.report is None:
        view.summary(out, chosen, len(reports), source)
        if args.summary:
            return
        out.add()
    for i, (n, r) in enumerate(chosen):
        if i:
            out.rule()
        view.report(out, r, n, show_raw, args.full)
