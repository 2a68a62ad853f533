"""Logs symbolized the way syzkaller does it, read back as the raw log was.

syzkaller's symbolizer (and syzbot's reports) write a frame's source place
after its offset, ``foo+0x1c/0x90 net/core/sock.c:1234``, and put each
function inlined at that place on a line of its own before it, with the
same prefix: ``kref_put include/linux/kref.h:70 [inline]``. syzbot titles
a crash from the console log before symbolization, so a title must come
out the same from both: :func:`unsymbolized` gives back the raw lines for
the title and the guilty frame. The frame list keeps everything (see
:mod:`kpeek.reports.details`).
"""

from __future__ import annotations

from kpeek.lazyre import lazy

# "func file:line [inline]", possibly after a prefix (a header such as
# "BUG: KASAN: use-after-free in ", "RIP: 0010:" or a "[<pc>] ? ").
_INLINE = lazy(r"[A-Za-z0-9_.$]+ [\w\-/.+]+:\d+ \[inline\]")
# " file:line" right after an offset/size: added by the symbolizer.
_SOURCE_AFTER_OFFSET = lazy(r"(\+0x[0-9a-f]+/0x[0-9a-f]+) [\w\-/.+]+\.[A-Za-z]+:\d+")


def is_inline_frame(line: str) -> bool:
    """Whether ``line`` is an inlined function's line the symbolizer added."""
    return line.endswith("[inline]") and _INLINE.search(line) is not None


def unsymbolized(lines: list[str]) -> list[str]:
    """``lines`` as they were before symbolization: no inline lines, and no
    source places after offsets. Lines of a raw log come back unchanged."""
    out = []
    for line in lines:
        if "[inline]" in line and is_inline_frame(line):
            continue
        if "/0x" in line and ":" in line:
            line = _SOURCE_AFTER_OFFSET.sub(r"\1", line)
        out.append(line)
    return out
