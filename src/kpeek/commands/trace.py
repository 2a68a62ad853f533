"""kpeek trace -- COMMAND [ARGS]: run a program and record its descriptor
tables after every syscall that changes them (open, close, dup, pipe,
socket, fork, execve, fcntl, exit...). Steps are numbered from 0 (the
program before execve) in text, JSON and HTML. kpeek exits with the program's
own status (124 if --timeout killed it); with --json the program's stdout goes
to stderr, so stdout is one JSON document."""

from __future__ import annotations

import argparse
from pathlib import Path

from kpeek import jsonout
from kpeek.commands.common import add_json, seconds
from kpeek.errors import NotSupported, UsageError
from kpeek.render import text

TIMED_OUT = 124


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trace",
        help="run a program under ptrace and record its file tables step by step",
        description=__doc__,
    )
    p.add_argument("--html", metavar="FILE", help="write a page to step through the trace")
    add_json(p)
    p.add_argument(
        "--io",
        action="store_true",
        help="also record read/write and friends (they move file offsets)",
    )
    p.add_argument(
        "--all-opens",
        action="store_true",
        help="keep the loader's and libc's open-and-close-at-once steps (hidden by default)",
    )
    p.add_argument("--timeout", type=seconds(0.001, 1e6), metavar="SECONDS",
                   help="kill the program after SECONDS (it may wait forever on a pipe)")
    p.add_argument("--max-steps", type=int, default=10000, metavar="N",
                   help="stop recording after N steps (default 10000)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kpeek.trace.changes import describe, drop_transient
    from kpeek.trace.report import text_lines, to_html, to_json
    from kpeek.trace.tracer import run_trace

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("trace: no command given (kpeek trace -- COMMAND [ARGS])")
    if args.max_steps < 1:
        raise UsageError("trace: --max-steps must be at least 1")
    if args.html:
        # Fail before running the program, not after.
        from kpeek.render.dot import have_dot

        if not have_dot():
            raise NotSupported("--html needs Graphviz: install the graphviz package")
        try:
            Path(args.html).touch()
        except OSError as e:
            raise UsageError(f"cannot write {args.html}: {e.strerror}") from e

    trace = run_trace(command, io=args.io, timeout=args.timeout, max_steps=args.max_steps,
                      stdout_to_stderr=args.json)
    steps = trace.steps
    if not args.all_opens:
        steps, hidden = drop_transient(steps)
        if hidden:
            trace.notes.append(
                f"{hidden} steps of transient close-on-exec opens hidden (--all-opens shows them)"
            )
    views = describe(steps)
    if args.html:
        Path(args.html).write_text(to_html(trace, views), encoding="utf-8")
    if args.json:
        jsonout.emit("trace", to_json(trace, views))
    elif not args.html:
        out = text.console()
        for line in text_lines(trace, views):
            out.print(line)
    else:
        text.console().print(f"{len(views)} steps written to {args.html}", highlight=False)
    return exit_code(trace)


def exit_code(trace) -> int:
    """kpeek trace exits as the traced program did, so scripts can use it in its
    place; 124 when --timeout killed it, as timeout(1) does."""
    if trace.stopped == "timeout":
        return TIMED_OUT
    return trace.exit_status or 0
