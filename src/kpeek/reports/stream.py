"""Read a kernel log of any size as a stream, in bounded memory.

The log is parsed in windows of a few MiB, cut at line ends. A window keeps
reports that start early enough for all their lines to be in it; the next
window starts after the last kept report (with a few lines before, for the
prefix a report keeps), so each report is parsed exactly as in one piece.
Binary input (``/dev/zero``, an image, a compressed log) is refused after
its first 64 KiB; an endless stream stops at MAX_INPUT.
"""

from __future__ import annotations

import os
import stat

from kpeek.errors import UsageError
from kpeek.lazyre import lazy
from kpeek.reports.parse import (
    MAX_REPORTS,
    MAX_SCAN_LINES,
    ParseResult,
    drop_truncated_repeat,
    parse_log,
)

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import BinaryIO

MAX_INPUT = 1 << 30  # bytes read from one log before giving up
# Bytes read per window: on a log of fuzz mutants 4 MiB windows peaked at
# 69 MB and 2 MiB ones at 45 MB, in the same time.
CHUNK = 2 << 20
_SNIFF = 64 << 10
_TAIL_LINES = MAX_SCAN_LINES + 64  # lines a report may still need after its start
_TAIL_BYTES = 8 << 20  # ... but never more than this carried over
_PREFIX = 12  # lines before a window's scan start, for a report's prefix


# Control characters no log holds (tab, line ends, escape and backspace do),
# and bytes that were not UTF-8 (decoded as surrogate escapes).
_BINARY_CHAR = lazy("[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\udc80-\udcff]")


class NotALog(UsageError):
    """The input is binary data, not a kernel log."""


def looks_binary(head: bytes) -> bool:
    """True for data no console log looks like: many NULs, control bytes or
    invalid UTF-8. Real logs with some garbage (syzkaller's have up to ~10%
    control bytes) stay text."""
    if not head:
        return False
    text = head.decode("utf-8", "surrogateescape")
    bad = len(_BINARY_CHAR.findall(text))
    return bad > 0.3 * len(text)


def open_log(path: str) -> BinaryIO:
    """Open a log file for streaming: a character device without blocking (a
    tty or a FIFO with no writer must not hang kpeek). Raises UsageError."""
    try:
        st = os.stat(path)
        flags = os.O_RDONLY | os.O_CLOEXEC
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            flags |= os.O_NONBLOCK
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path} is a directory, not a log file")
    return os.fdopen(fd, "rb", buffering=0)


def _read(f: BinaryIO, size: int, name: str) -> bytes:
    """Up to ``size`` bytes; b"" at the end, or when a device has nothing now."""
    out = bytearray()
    while len(out) < size:
        try:
            data = f.read(size - len(out))
        except BlockingIOError:
            break
        except OSError as e:
            raise UsageError(f"cannot read {name}: {e.strerror}") from None
        if not data:
            break
        out += data
    return bytes(out)


def parse_stream(f: BinaryIO, name: str, *, max_reports: int = MAX_REPORTS,
                 chunk: int = CHUNK, max_input: int = MAX_INPUT) -> ParseResult:
    """Every report in the log read from ``f``, in memory bounded by ``chunk``.

    Raises NotALog for binary data and UsageError past ``max_input`` bytes.
    """
    reports = []
    truncated = False
    carry = b""  # the lines carried over from the last window
    start = 0  # where in the window to look for reports (before: prefix lines only)
    line_base = 0  # input line number of the window's first line
    data = _read(f, chunk, name)
    total = len(data)
    if looks_binary(data[:_SNIFF]):
        raise NotALog(f"{name} is not a kernel log (binary data); give a console log, "
                      "dmesg or journalctl -k output")
    while True:
        # One chunk read ahead: a window that is the log's last is parsed once,
        # as the end (a log shorter than a chunk was parsed twice).
        ahead = _read(f, chunk, name) if data else b""
        total += len(ahead)
        if total > max_input:
            raise UsageError(f"{name} is larger than {max_input >> 20} MiB; "
                             "cut out the part with the report")
        at_end = not ahead
        window, rest = carry + data, b""
        if not at_end:
            cut = window.rfind(b"\n") + 1
            if cut == 0:  # no line end in a whole chunk: cut the (huge) line anyway
                cut = len(window)
            window, rest = window[:cut], window[cut:]
        text = window.decode("utf-8", "surrogateescape")
        result = parse_log(text, max_reports=max_reports - len(reports), start=start,
                           whole=False)
        truncated = truncated or result.truncated
        n_lines = text.count("\n")
        boundary = n_lines if at_end else _boundary(text, n_lines)
        kept = [r for r in result.reports if r.start_line < boundary]
        resume = max(start, _offset_of_line(text, boundary, n_lines),
                     kept[-1].resume_offset if kept else 0)
        for r in kept:
            r.start_line += line_base
            r.end_line += line_base
        reports.extend(kept)
        if at_end or len(reports) >= max_reports:
            truncated = truncated or not at_end
            break
        resume = min(resume, len(text))
        keep_from = max(0, text.count("\n", 0, resume) - _PREFIX)
        offset = _offset_of_line(text, keep_from, n_lines)
        carry = text[offset:].encode("utf-8", "surrogateescape") + rest
        start = resume - offset
        line_base += keep_from
        data = ahead
    drop_truncated_repeat(reports)
    return ParseResult(reports, truncated)


def _boundary(text: str, n_lines: int) -> int:
    """The first line whose report might run past the window's end: _TAIL_LINES
    from the end, or fewer when those lines are long (at most _TAIL_BYTES)."""
    low = max(0, len(text) - _TAIL_BYTES)
    pos = len(text) - 1  # the window ends with a line end
    back = 0
    while back < _TAIL_LINES:
        nl = text.rfind("\n", low, pos)
        if nl < 0:
            break
        pos, back = nl, back + 1
    return max(0, min(n_lines - back, n_lines))


def _offset_of_line(text: str, line: int, n_lines: int | None = None) -> int:
    """Offset where 0-based ``line`` starts (len(text) past the end); walks from
    the end when given the line count and the line is in the second half."""
    if n_lines is not None and line > n_lines // 2:
        pos, steps = len(text), n_lines - line + 1
        if text.endswith("\n"):  # the last line end closes the last line
            pos, steps = pos - 1, steps - 1
        for _ in range(steps):
            pos = text.rfind("\n", 0, pos)
            if pos < 0:
                return 0
        return pos + 1 if pos < len(text) else len(text)
    pos = 0
    for _ in range(line):
        nl = text.find("\n", pos)
        if nl < 0:
            return len(text)
        pos = nl + 1
    return pos
