"""Logs symbolized the way syzkaller does it, read back as the raw log was.

syzkaller's symbolizer (and syzbot's reports) write a frame's source place
after its offset, ``foo+0x1c/0x90 net/core/sock.c:1234``, and put each
function inlined at that place on a line of its own before it, with the
same prefix: ``kref_put include/linux/kref.h:70 [inline]``. syzbot titles
a crash from the console log before symbolization, so a title must come
out the same from both: :func:`unsymbolized` gives back the raw lines for
the title and the guilty frame. The frame list keeps everything (see
:mod:`kpeek.reports.details`).

The kernel's own scripts/decode_stacktrace.sh writes a frame differently:
it drops the offset, puts the source places in parentheses (the inlined
ones first, all on the line), drops the ``[<pc>]`` words and the line's
leading blanks, and prints the module without brackets:
``? ext4_map_blocks (fs/ext4/inode.c:12 fs/ext4/inode.c:40) ext4``.
:func:`undecoded` turns such a line into the form above, with the frame's
own place (the last one), an offset of 0/0 and, on a stack line, a pc of 0:
both stand for "not known" (a report format may require a pc there).
"""

from __future__ import annotations

from kpeek.lazyre import lazy

# "func file:line [inline]", possibly after a prefix (a header such as
# "BUG: KASAN: use-after-free in ", "RIP: 0010:" or a "[<pc>] ? ").
_INLINE = lazy(r"[A-Za-z0-9_.$]+ [\w\-/.+]+:\d+ \[inline\]")
# " file:line" right after an offset/size: added by the symbolizer.
_SOURCE_AFTER_OFFSET = lazy(r"(\+0x[0-9a-f]+/0x[0-9a-f]+) [\w\-/.+]+\.[A-Za-z]+:\d+")


# decode_stacktrace.sh: "[? ][seg:]name (a.c:1[ b.h:2...])[ module]", with the
# trailing blank its echo leaves.
_PLACE = r"[\w\-/.+]+\.[A-Za-z]+:\d+(?: \(discriminator \d+\))?"
_DECODED = lazy(
    rf"^(?P<head>.*?)(?P<name>[A-Za-z_][A-Za-z0-9_.$]*) \((?P<places>{_PLACE}(?: {_PLACE})*)\)"
    r"(?: (?P<module>[A-Za-z0-9_\-]+))? ?$"
)
_QUESTION = lazy(r"^\?\s*$")
_DISCRIMINATOR = lazy(r" \(discriminator \d+\)")
_WAIT_TYPES = lazy(r"\}-\{\d+:\d+\}, at: $")


def undecoded(text: str) -> str:
    """A line of decode_stacktrace.sh output in the syzkaller form (a frame
    line gets back its leading blank); other lines unchanged."""
    if not text.endswith((") ", ")")) and ") " not in text:
        return text
    m = _DECODED.match(text)
    if m is None:
        return text
    places = m["places"]
    if "(" in places:
        places = _DISCRIMINATOR.sub("", places)
    place = places.rsplit(" ", 1)[-1]  # addr2line -i: the frame's own place last
    module = f" [{m['module']}]" if m["module"] else ""
    head, frame = m["head"], f"{m['name']}+0x0/0x0 {place}{module}"
    if not head or _QUESTION.match(head):  # a stack line: the kernel indents it
        return f" {head}[<0000000000000000>] {frame}"
    if head.startswith("(") and head.endswith(") from "):  # 32-bit arm's caller line
        return f"[<00000000>] {head}[<00000000>] ({frame})"
    if head.endswith("}, at: ") and \
            _WAIT_TYPES.search(head) is None:
        # lockdep's held lock before its wait types ("-{3:3}", 5.8+) printed "at: [<pc>] f"
        return f"{head}[<0000000000000000>] {frame}"
    return f"{head}{frame}"


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
