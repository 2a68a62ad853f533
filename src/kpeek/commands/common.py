"""Options shared by several verbs, so they read the same everywhere."""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
from collections.abc import Callable, Iterator

from kpeek.errors import NotPermitted

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

    from kpeek.model import Snapshot

# The model and the sources load only for the verbs that take a snapshot
# (oops, struct and sym start faster without them).


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_source(parser: argparse.ArgumentParser) -> None:
    from kpeek.sources import SOURCES

    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="where the data comes from: bpf (more facts, needs root) or procfs; "
        "auto picks bpf where it loads; memory walks kernel objects (as in a dump)",
    )


def add_raw_pointers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw-pointers",
        action="store_true",
        help="show kernel addresses unhashed (root only)",
    )
    parser.add_argument(
        "--stable-ids",
        action="store_true",
        help="hash kernel addresses with your kept key (~/.config/kpeek/id-key, or "
        "$KPEEK_ID_KEY), so two runs can be compared",
    )


def add_snapshot_outputs(parser: argparse.ArgumentParser) -> None:
    """--source, --json and the pointer options: every verb that prints a snapshot."""
    add_source(parser)
    add_json(parser)
    add_raw_pointers(parser)


def add_pid_lists(parser: argparse.ArgumentParser, *flags: str, dest: str, help: str) -> None:
    """A repeatable -p PID[,PID...] (comma or space lists), kept as given in
    ``dest`` (a list of strings) for the verb to read."""
    parser.add_argument(*flags, dest=dest, action="append", default=[],
                        type=nonempty("pid list", blank=", \t"), metavar="PID[,PID...]",
                        help=help)


def add_users(parser: argparse.ArgumentParser, *flags: str, dest: str, help: str) -> None:
    """A repeatable -u USER[,USER...] (names or uids), kept as given in ``dest``."""
    parser.add_argument(*flags, dest=dest, action="append", metavar="USER[,USER...]",
                        type=nonempty("user list", blank=",^ \t"), help=help)


def nonempty(what: str, blank: str = " \t") -> Callable[[str], str]:
    """An argparse type: any text but one made of ``blank`` alone ("$X" of
    an unset variable), which would select everything or nothing, never
    what was meant."""

    def parse(text: str) -> str:
        if not text.strip(blank):
            raise argparse.ArgumentTypeError(f"an empty {what}")
        return text

    return parse


def raw_pointers_allowed(args: argparse.Namespace) -> bool:
    """Kernel pointers are secrets: raw only for root, and only when asked.

    With ``--stable-ids``, hashes are keyed with the user's kept key instead of
    a fresh one (see kpeek.ids)."""
    if getattr(args, "stable_ids", False):
        from kpeek.ids import use_stable_key

        use_stable_key()
    if not getattr(args, "raw_pointers", False):
        return False
    if os.geteuid() != 0:
        raise NotPermitted("--raw-pointers needs root: kernel addresses defeat KASLR")
    return True


def is_live(args: argparse.Namespace) -> bool:
    """True unless a dump was given with -c (without importing the kernel layer)."""
    return getattr(args, "core", None) is None


def snapshot(args: argparse.Namespace, **kwargs: Any) -> Snapshot:
    """The verb's snapshot: kernel objects walked in the dump given with -c,
    else from the live source chosen with --source."""
    if getattr(args, "core", None) is None:  # live: spare ps and files the kernel layer
        from kpeek.sources import take_snapshot

        return take_snapshot(getattr(args, "source", "auto"), **kwargs)
    from kpeek.sources import memwalk
    from kpeek.targets import open_kernel

    return memwalk.take_snapshot(open_kernel(args, "reading tasks"), **kwargs)


def seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds in [low, high]. nan, inf and
    1e300 are refused as bad usage rather than breaking a timer later."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a number of seconds from {low:g} to {high:g}")
        return value

    return parse


PID_MAX_LIMIT = 1 << 22  # the kernel's largest pid_max (include/linux/threads.h)


def pid_number(text: str) -> int:
    """An argparse type: a process id, 1 to the kernel's largest pid_max."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if not 1 <= value <= PID_MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id (1-{PID_MAX_LIMIT})")
    return value


def namespace_number(text: str) -> int:
    """An argparse type: a namespace by inode number, as ps shows it or as
    `readlink /proc/PID/ns/pid` does (``pid:[4026531836]``)."""
    digits = text.strip()
    if digits.endswith("]") and ":[" in digits:
        digits = digits[digits.index(":[") + 2:-1]
    if not digits.isdigit() or int(digits) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace (its inode number, as in the PIDNS column)")
    return int(digits)


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """No cyclic garbage collection while a one-shot verb builds and prints
    its snapshot: hundreds of thousands of small objects (tasks, descriptors)
    live until the end, and the collector would walk them again and again
    for nothing. Switched back on after (verbs also run inside tests)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
