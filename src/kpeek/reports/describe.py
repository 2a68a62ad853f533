"""Title, guilty frame and corruption of one report, from the kind table.

Input is the report's message lines (prefixes already stripped, other
contexts and unreliable frames already dropped); output is a
:class:`Description`. Every pattern is applied to single, length-capped
lines, and each line is visited a bounded number of times per format, so
the work is linear in the report size.
"""

from __future__ import annotations

import re
from functools import lru_cache

from kpeek.lazyre import lazy
from kpeek.records import record
from kpeek.reports.demangle import demangle
from kpeek.reports.patterns import PARSE_STACK, Format, ReportKind, StackSpec
from kpeek.reports.table import (
    COMMON_SKIP,
    CORRUPTED_LINES,
    CORRUPTED_TITLES,
    FRAME_LINES,
    RISCV_STACK_START,
    STACK_START_ANY,
    STACK_STARTS,
    STRIP_FRAME_PREFIXES,
)

CORRUPTED_FRAME = "corrupted"
NO_FRAMES = "no guilty frame found in the stack"
TITLE_NOT_REPORT = "report start found but not the rest of its format"
FORMAT_CORRUPTED = "only a fragment of a report (its header was lost)"
MAX_TITLE = 120


@record(frozen=True)
class Description:
    """What the table says about one report."""

    title: str
    alt_titles: tuple[str, ...]
    corrupted_reason: str  # "" when the report looks whole
    format: Format | None
    frames: tuple[str, ...]  # guilty frames (canonical), in stack-spec order


def describe(lines: list[str], kind: ReportKind) -> Description:
    """Apply ``kind``'s formats to a report's lines.

    Returns an empty title when not even the kind's header is present.
    """
    header_lines = [i for i, line in enumerate(lines) if kind.header in line]
    # The format whose title appears first wins; ties go to table order.
    best: tuple[int, int] | None = None
    firsts: list[tuple[int, int, re.Match[str]] | None] = []
    for fmt in kind.formats:
        found = None
        for i in header_lines:
            m = fmt.title.search(lines[i])
            if m:
                found = (i, m.start(), m)
                break
        firsts.append(found)
        if found and (best is None or found[:2] < best):
            best = found[:2]
    if best is not None:
        for fmt, found in zip(kind.formats, firsts, strict=True):
            if not found or found[:2] != best:
                continue
            desc = _try_format(fmt, lines, found)
            if desc is not None:
                return desc
    # The header is there but no format completes: keep the raw header line.
    for i in header_lines:
        pos = lines[i].find(kind.header)
        reason = TITLE_NOT_REPORT if best is not None else ""
        return Description(lines[i][pos:], (), reason, None, ())
    return Description("", (), "", None, ())


def _try_format(fmt: Format, lines: list[str],
                title_match: tuple[int, int, re.Match[str]]) -> Description | None:
    if fmt.report:
        matched = _match_steps(fmt, lines)
        if matched is None:
            return None
        groups, start_line, start_col = matched
    else:
        start_line, start_col, m = title_match
        groups = [g or "" for g in m.groups()]
    frames: list[tuple[str, str]] = []  # (canonical, raw)
    reason = ""
    if fmt.stack is not None:
        stack_lines = [lines[start_line][start_col:], *lines[start_line + 1:]]
        frames, ok = extract_frames(fmt.stack, stack_lines)
        if not ok:
            reason = NO_FRAMES
    args = [*groups, *(c for c, _ in frames)]
    title = _format(fmt.fmt, args)
    alts: list[str] = [_format(a, args) for a in fmt.alt]
    # Titles with the raw (or partly stripped) frame names also name this bug.
    for variant in _partly_stripped(frames):
        for template in (fmt.fmt, *fmt.alt):
            alts.append(_format(template, [*groups, *variant]))
    if not reason and fmt.corrupted:
        reason = FORMAT_CORRUPTED
    unique = tuple(dict.fromkeys(a for a in alts if a != title))
    return Description(title, unique, reason, fmt, tuple(c for c, _ in frames))


def _format(template: str, args: list[str]) -> str:
    try:
        return template.format(*args)
    except IndexError:
        return template.format(*args, *([CORRUPTED_FRAME] * 8))


def _first_line(pattern: re.Pattern[str], lines: list[str],
                start: int = 0) -> tuple[int, re.Match[str]] | None:
    """Index and match of the first line at or after ``start`` that matches."""
    for i in range(start, len(lines)):
        m = pattern.search(lines[i])
        if m:
            return i, m
    return None


def _match_steps(fmt: Format, lines: list[str]) -> tuple[list[str], int, int] | None:
    """Find the report's steps on successive lines; returns (groups, line, column)."""
    found = _first_line(fmt.report[0].pattern, lines)
    if found is None:
        return None
    i, m = found
    groups = [g or "" for g in m.groups()]
    start = (i, m.start())
    # Later steps take the earliest line that fits: if that fails from the
    # first start, it fails from any later one too.
    for step in fmt.report[1:]:
        found = _first_line(step.pattern, lines, i if step.same_line else i + 1)
        if found is None:
            return None
        i, m = found
        groups.extend(g or "" for g in m.groups())
    return groups, start[0], start[1]


# Most never-guilty names are plain words: a substring test each. Compiling
# all ~250 as one alternation took longer than the rest of `kpeek oops FILE`.
_COMMON_WORDS = tuple(p for p in COMMON_SKIP if re.escape(p) == p)
_COMMON_SKIP = lazy("|".join(p for p in COMMON_SKIP if re.escape(p) != p))


@lru_cache(maxsize=256)
def _extra_skip(extra: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(extra)) if extra else None


@lru_cache(maxsize=8192)
def _common_skip(name: str) -> bool:
    # ~250 names cost ~10 µs a frame; frames repeat a lot.
    return any(w in name for w in _COMMON_WORDS) or _COMMON_SKIP.search(name) is not None


def _skipped(name: str, extra: re.Pattern[str] | None) -> bool:
    return _common_skip(name) or (extra is not None and extra.search(name) is not None)


def strip_frame(name: str) -> str:
    """``name`` without its syscall-wrapper prefix (``__x64_sys_read`` -> ``read``)."""
    best = name
    for prefix in STRIP_FRAME_PREFIXES:
        if name.startswith(prefix) and len(name) - len(prefix) < len(best):
            best = name[len(prefix):]
    return best


def _matches_any(line: str, patterns) -> bool:
    return any(p.search(line) for p in patterns)


def extract_frames(spec: StackSpec, lines: list[str]) -> tuple[list[tuple[str, str]], bool]:
    """Guilty frames per ``spec``: a list of (canonical, raw) and whether all were found."""
    frames, ok = _walk_parts(spec, spec.parts, lines)
    if ok or not spec.parts2:
        return frames, ok
    return _walk_parts(spec, spec.parts2, lines)


def _choose(spec: StackSpec, raw: list[str]) -> tuple[str, str]:
    if not raw:
        return "", ""
    stripped = [strip_frame(f) for f in raw]
    if spec.chooser is None:
        return stripped[0], raw[0]
    frame, idx = spec.chooser(stripped)
    return (frame, raw[idx]) if frame else ("", "")


def _walk_parts(spec: StackSpec, parts, lines: list[str]) -> tuple[list[tuple[str, str]], bool]:
    extra = _extra_skip(spec.skip)
    results: list[tuple[str, str]] = []
    candidates: list[str] = []
    ok = True
    stacks = 0
    pos = 0
    idx = 0

    def add(m: re.Match[str] | None) -> None:
        if m is None:
            return
        for g in m.groups():
            if g is None:
                continue
            g = demangle(g, params=False)
            if not _skipped(g, extra):
                candidates.append(g)

    while True:
        if idx == len(parts) or (parts[idx] is PARSE_STACK and stacks > 0):
            chosen = _choose(spec, candidates)
            if not chosen[0]:
                chosen, ok = (CORRUPTED_FRAME, CORRUPTED_FRAME), False
            results.append(chosen)
            candidates = []
        if idx == len(parts):
            break
        part = parts[idx]
        if part is PARSE_STACK:
            stacks += 1
            nxt = parts[idx + 1] if idx + 1 < len(parts) else None
            while pos < len(lines):
                line = lines[pos]
                pos += 1
                if _matches_any(line, CORRUPTED_LINES):
                    ok = False
                    break
                if STACK_START_ANY.search(line):
                    break
                if nxt is not None and nxt is not PARSE_STACK:
                    m = nxt.search(line)
                    if m:
                        add(m)
                        idx += 1
                        break
                for frame_re in FRAME_LINES:
                    m = frame_re.search(line)
                    if m:
                        add(m)
                        break
        else:
            while pos < len(lines):
                line = lines[pos]
                pos += 1
                if _matches_any(line, CORRUPTED_LINES):
                    ok = False
                    break
                m = part.search(line)
                if m:
                    add(m)
                    break
        idx += 1
    return results, ok


def _partly_stripped(frames: list[tuple[str, str]]) -> list[list[str]]:
    """Frame lists with the raw names and with each single prefix removed."""
    if not frames:
        return []
    variants = [[raw for _, raw in frames]]
    for prefix in STRIP_FRAME_PREFIXES:
        trimmed = [raw[len(prefix):] if raw.startswith(prefix) else raw for _, raw in frames]
        if trimmed != variants[0]:
            variants.append(trimmed)
    return variants


def corruption(title: str, lines: list[str], fmt: Format | None) -> str:
    """Why a described report looks garbled, or "" when it looks whole."""
    if _matches_any(title, CORRUPTED_TITLES):
        return "title has a console timestamp in it (interleaved lines)"
    if fmt is None or fmt.no_stack_trace:
        return ""
    # First line of each kind of stack start, found in one pass.
    first: dict[int, int] = {}
    for i, line in enumerate(lines):
        if STACK_START_ANY.search(line) or RISCV_STACK_START.search(line):
            for k, start in enumerate((*STACK_STARTS, RISCV_STACK_START)):
                if k not in first and start.search(line):
                    first[k] = i
    has_stack = False
    for k in sorted(first):
        i = first[k]
        following = lines[i + 1:i + 17]
        if len(following) < 2:
            return "the call trace is cut off"
        found = False
        for line in following[:15]:
            if STACK_START_ANY.search(line) or RISCV_STACK_START.search(line):
                break
            if "(stack is not available)" in line or _matches_any(line, FRAME_LINES):
                has_stack = found = True
                break
        if k != len(STACK_STARTS) and not found:
            return "a call trace has no frames"
    if not has_stack:
        return "no stack trace in the report"
    return ""


# Parts of titles that change between runs of the same bug.
_TITLE_REPLACEMENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (lazy(r"syz-executor\.?[0-9]+((/|:)[0-9]+)?"), "syz-executor"),
    (lazy(r"syzkaller[0-9]+((/|:)[0-9]+)?"), "syzkaller"),
    (lazy(r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}"), r"\1ADDR"),
    (lazy(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})"), "IP"),
    (lazy(r"(\.\w+)(:[0-9]+)+"), r"\1:LINE"),
    (lazy(r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+"), r"\1"),
    (lazy(r"CPU#[0-9]+"), "CPU"),
    (lazy(r"(\W)(\d+)(\W|$)"), r"\1NUM\3"),
    (lazy(r"\d{7,}"), "NUM"),
)


def normalize_title(title: str) -> str:
    """A stable title: addresses, numbers, PIDs and offsets replaced, at most 120 chars."""
    title = title[:4 * MAX_TITLE]
    for pattern, replacement in _TITLE_REPLACEMENTS:
        for _ in range(8):  # overlapping matches ("0,1,2") need a few rounds
            new = pattern.sub(replacement, title)
            if new == title:
                break
            title = new
    out: list[str] = []
    prev = " "
    for ch in title[:MAX_TITLE]:
        if ch == "\t":
            ch = " "
        elif ord(ch) < 0x20 or ord(ch) >= 0x7F:
            continue
        if ch == " " and prev == " ":
            continue
        out.append(ch)
        prev = ch
    return "".join(out).strip()
