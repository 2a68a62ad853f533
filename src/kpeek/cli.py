"""Command-line entry point: argument parsing only.

Each verb lives in ``kpeek.commands.<verb>`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a
function ``(args) -> int`` that returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kpeek import __version__
from kpeek.errors import EXIT_USAGE, KpeekError

# One line per verb module; keep sorted.
COMMAND_MODULES: tuple[str, ...] = (
    "kpeek.commands.bt",
    "kpeek.commands.dis",
    "kpeek.commands.doctor",
    "kpeek.commands.files",
    "kpeek.commands.oops",
    "kpeek.commands.listwalk",
    "kpeek.commands.ps",
    "kpeek.commands.rd",
    "kpeek.commands.serve",
    "kpeek.commands.struct",
    "kpeek.commands.sym",
    "kpeek.commands.task",
    "kpeek.commands.trace",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as documented
        sys.stderr.write(f"kpeek: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kpeek", description="See inside a running Linux kernel, safely.")
    parser.add_argument("--version", action="version", version=f"kpeek {__version__}")
    parser.add_argument("-c", "--core", metavar="FILE",
                        help="read a crash dump (vmcore) instead of the live kernel")
    parser.add_argument("--vmlinux", metavar="FILE",
                        help="types from this vmlinux, for a dump that carries no BTF")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KpeekError as e:
        sys.stderr.write(f"kpeek: {e}\n")
        return e.exit_code
    except BrokenPipeError:
        # Output piped into head(1): not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
