"""Command-line entry point: argument parsing only.

Each verb lives in a module listed in ``VERBS`` that exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a
function ``(args) -> int`` that returns the exit code. Only the chosen
verb's module is imported.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import os
import sys
import types

from kpeek import __version__, streams
from kpeek.english_argparse import argparse
from kpeek.errors import EXIT_INTERNAL, EXIT_UNSUPPORTED, EXIT_USAGE, KpeekError, os_reason

# One line per verb: its module (imported only when that verb runs, so start-up
# stays cheap) and the help line `kpeek --help` shows. Keep sorted.
VERBS: dict[str, tuple[str, str]] = {
    "bt": ("kpeek.commands.bt", "kernel stack of a task"),
    "dis": ("kpeek.commands.dis", "disassemble kernel code"),
    "doctor": ("kpeek.commands.doctor", "explain every stuck task: deadlocks, hung tasks, pipes"),
    "files": ("kpeek.commands.files", "descriptor, open-file and inode tables"),
    "kmem": ("kpeek.commands.kmem", "slab caches, and which cache and object an address is"),
    "list": ("kpeek.commands.listwalk", "walk a kernel linked list, checking its integrity"),
    "log": ("kpeek.commands.log", "the kernel log from memory, like dmesg"),
    "mod": ("kpeek.commands.mod", "loaded kernel modules: ranges, refcounts, users, holders"),
    "oops": ("kpeek.commands.oops", "read kernel crash reports from a log or the live kernel"),
    "print": ("kpeek.commands.printvar", "a global variable's value, with its type (crash's p)"),
    "ps": ("kpeek.commands.ps", "processes and threads"),
    "rd": ("kpeek.commands.rd", "hex dump of kernel memory"),
    "serve": ("kpeek.commands.serve", "live diagram of file tables in a local web page"),
    "shell": ("kpeek.commands.shell", "interactive drgn session with kpeek's types and symbols"),
    "sources": ("kpeek.commands.sources", "where each fact comes from here; kept BPF programs"),
    "struct": ("kpeek.commands.struct", "a kernel type's layout, or its values at an address"),
    "sym": ("kpeek.commands.sym", "kernel symbol <-> address"),
    "sys": ("kpeek.commands.sys", "kernel release, build id, uptime, CPUs, taint, panic"),
    "task": ("kpeek.commands.task", "a task's task_struct and its key fields"),
    "trace": ("kpeek.commands.trace",
              "run a program under ptrace and record its file tables step by step"),
}


class _LazyVerbs(argparse._SubParsersAction):
    """Subcommands known by name and help line only until chosen: only then is
    the verb's module imported and its parser built (building a parser for
    each of the 19 verbs cost more than parsing)."""

    def add_placeholder(self, name: str, help_line: str) -> None:
        # What add_parser records for `kpeek --help` and for the choices an
        # unknown verb is told about, without the parser.
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help_line))
        self._name_parser_map[name] = None

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        name = values[0]
        if name in VERBS and self._name_parser_map.get(name) is None:
            listed = list(self._choices_actions)
            del self._name_parser_map[name]
            importlib.import_module(VERBS[name][0]).register(self)
            self._choices_actions[:] = listed  # the help line is the table's
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as documented
        sys.stderr.write(f"kpeek: {message}\n")
        raise SystemExit(EXIT_USAGE)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter for every add_argument (to check the
        # metavar) and sizes it with shutil, whose import (bz2, lzma...) is
        # 3 ms of every start-up; the same width, found the same way:
        return self.formatter_class(prog=self.prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kpeek", description="See inside a running Linux kernel, safely.")
    parser.add_argument("--version", action="version", version=f"kpeek {__version__}")
    parser.add_argument("-c", "--core", metavar="FILE",
                        help="read a crash dump (vmcore) instead of the live kernel")
    parser.add_argument("--vmlinux", metavar="FILE",
                        help="types from this vmlinux, for a dump that carries no BTF")
    parser.register("action", "lazy_verbs", _LazyVerbs)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser,
                                action="lazy_verbs")
    for name, (_module, help_line) in VERBS.items():
        sub.add_placeholder(name, help_line)
    return parser


class _InspectOnFirstUse(types.ModuleType):
    """Stands in sys.modules for ``inspect`` until an attribute of it is used.

    Python 3.11's dataclasses imports inspect (with ast, dis, tokenize and
    linecache: ~6 ms of CPU, an eighth of a kpeek oops) only to write a
    docstring for a class that has none; kpeek's classes all have one. The
    first use imports the real module, puts it in sys.modules and answers
    from it, so a module that imported this stand-in still gets every name.
    """

    def __getattr__(self, name: str) -> object:
        if sys.modules.get("inspect") is self:
            del sys.modules["inspect"]
        real = importlib.import_module("inspect")
        self.__dict__.update(real.__dict__)  # later uses: no detour
        return getattr(real, name)


def _defer_inspect() -> None:
    # 3.12+ dataclasses call inspect.get_annotations for every class: no gain there.
    if sys.version_info < (3, 12) and "inspect" not in sys.modules:
        sys.modules["inspect"] = _InspectOnFirstUse("inspect")


def entry() -> None:
    """The ``kpeek`` command: :func:`main`, then out of the process without
    tearing the interpreter down (freeing every object one by one: 3.5 ms of
    a ``kpeek files PID``, 15-45 ms after a whole system's snapshot) once
    nothing is left to do: the output flushed, the exit handlers run, and no
    other thread to wait for. Otherwise, and in-process, a plain exit."""
    code = main()
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # gone: main has told what it could, the code still tells
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    _defer_inspect()
    streams.guard_stdout()
    try:
        code = _run(argv)
        streams.finish_stdout()
        return code
    except streams.OutputClosed:
        # Output piped into head(1): stop quietly, as a SIGPIPE'd tool would.
        streams.silence_stdout()
        return streams.EXIT_PIPE
    except KpeekError as e:
        _say(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            _say(f"not permitted: {os_reason(e)} (run as root, or as the file's owner)")
            return EXIT_UNSUPPORTED
        return _internal(e)
    except Exception as e:  # last resort: one line, never a traceback
        return _internal(e)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own exits (--help, --version, bad usage)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # A snapshot is hundreds of thousands of small objects that all live to
    # the end; the default thresholds rescan them again and again (a third of
    # files --json). Modules loaded so far are never garbage: freeze them.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    return int(args.func(args) or 0)


def _say(line: str) -> None:
    try:
        sys.stderr.write(f"kpeek: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr is gone too: the exit code still tells


def _internal(e: BaseException) -> int:
    if os.environ.get("KPEEK_DEBUG"):
        import traceback  # only here: it costs 3 ms of every start-up

        traceback.print_exc()
    what = str(e).splitlines()[0] if str(e) else ""
    _say(f"internal error ({type(e).__name__}{': ' + what if what else ''}); this is a bug, "
         "please report it with the command line (KPEEK_DEBUG=1 shows the traceback)")
    return EXIT_INTERNAL
