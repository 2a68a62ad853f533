"""Building blocks of the report table: regex shorthands, stack specs, formats.

The table in :mod:`kpeek.reports.table` describes each kind of kernel report
as data (how it starts, how its title is formed, which frames are never to
blame). This module holds the small types it is written in.

All patterns are applied to one console line at a time (``.`` never crosses
a line), and lines are length-capped before matching, so every match is
linear in the line length: no pattern here can make parsing hang.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import field

from kpeek.lazyre import lazy
from kpeek.records import record

# Shorthands used inside table patterns.
_EXPAND = {
    "{{ADDR}}": r"0x[0-9a-f]+",
    "{{PC}}": r"\[<?(?:0x)?[0-9a-f]+>?\]",
    # A function name as the kernel prints it: "name+0x12/0x34" or "name.isra.0+...".
    "{{FUNC}}": r"([a-zA-Z0-9_]+)(?:\.|\+)",
    "{{SRC}}": r"([a-zA-Z0-9\-_/.]+\.[a-z]+:[0-9]+)",
}


def rx(pattern: str) -> re.Pattern[str]:
    """``pattern`` with the {{PC}}/{{FUNC}}/{{SRC}}/{{ADDR}} shorthands expanded,
    compiled on first use."""
    for key, value in _EXPAND.items():
        pattern = pattern.replace(key, value)
    return lazy(pattern)


class _ParseStack:
    """Marker in a stack spec: parse a run of stack frames from here."""

    def __repr__(self) -> str:
        return "PARSE_STACK"


PARSE_STACK = _ParseStack()

StackPart = re.Pattern[str] | _ParseStack
# Picks the guilty frame from the candidate frames (already stripped of
# syscall prefixes); returns (frame, index) or ("", -1).
FrameChooser = Callable[[list[str]], tuple[str, int]]


@record(frozen=True)
class StackSpec:
    """How to find the guilty frame of one report format.

    ``parts`` are matched in order over the report's lines: a regex part
    consumes lines up to its first match (its groups become candidate
    frames); PARSE_STACK consumes a stack trace, each frame a candidate.
    ``parts2`` is tried when ``parts`` yields no frame. ``skip`` adds
    format-specific never-guilty function patterns to the common list.
    """

    parts: tuple[StackPart, ...]
    parts2: tuple[StackPart, ...] = ()
    skip: tuple[str, ...] = ()
    chooser: FrameChooser | None = None


@record(frozen=True)
class Step:
    """One line of a multi-line report pattern: must match a later line."""

    pattern: re.Pattern[str]
    same_line: bool = False  # may match on the same line as the previous step


@record(frozen=True)
class Format:
    """One title format of a report kind.

    ``title`` recognises the format on a line. ``report`` (optional) is a
    sequence of line patterns that must all be found, in order, for the
    format to be complete; its groups, or the title's, feed ``fmt``
    (``{0}``, ``{1}``, ... ; the guilty frame is appended as the last
    argument). A format whose title matches but whose report does not is
    a corrupted report.
    """

    title: re.Pattern[str]
    fmt: str
    report: tuple[Step, ...] = ()
    alt: tuple[str, ...] = ()
    stack: StackSpec | None = None
    no_stack_trace: bool = False
    corrupted: bool = False


@record(frozen=True)
class ReportKind:
    """All formats that share one start marker (e.g. ``BUG:``)."""

    header: str
    formats: tuple[Format, ...]
    suppressions: tuple[re.Pattern[str], ...] = field(default=())

    def __post_init__(self) -> None:
        joined = "|".join(f"(?:{s.pattern})" for s in self.suppressions)
        object.__setattr__(self, "_suppressed", lazy(joined) if joined else None)

    def starts(self, line: str) -> bool:
        """True when ``line`` starts a report of this kind."""
        if self.header not in line:
            return False
        return self._suppressed is None or not self._suppressed.search(line)
