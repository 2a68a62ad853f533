"""Logs passed through the kernel's scripts/decode_stacktrace.sh keep their titles.

The script rewrites every line that holds a ``[<pc>]`` or a ``f+0x1/0x2``:
it splits the line into words (losing the leading blanks), drops the
``[<pc>]`` words, reprints a split timestamp as ``[%13s``, and replaces the
last symbol by ``f (file.c:12 ...)`` (the offset gone, inlined places first)
followed by the module without its brackets and the blank its echo leaves.
The emulation below does the same with made-up places, so every corpus log
can be read both ways: the title, kind, guilty frame and corruption must not
change, and the frames keep their function, module and place.
"""

from __future__ import annotations

import random
import re

from kpeek.reports import parse_reports
from test_oops_symbolized import _facts, _logs

_PC = re.compile(r"\[<([^]]+)>\]")
_SYMBOL = re.compile(r"^(?P<seg>[^:]*:)?(?P<name>[^+]+)\+0x[0-9a-f]+/0x[0-9a-f]+$")
_HAS_SYMBOL = re.compile(r"[^+ ]+\+0x[0-9a-f]+/0x[0-9a-f]+")


def decode_line(line: str, rnd: random.Random) -> str:
    """One line as decode_stacktrace.sh prints it (addr2line made up)."""
    if not (_PC.search(line) or _HAS_SYMBOL.search(line)) or "Code:" in line:
        return line
    words = line.split()
    if not words:
        return line
    last = len(words) - 1
    kept: list[str | None] = list(words)
    for i, w in enumerate(words):
        if _PC.search(w):
            kept[i] = None
        if w == "[" and i + 1 < len(words) and words[i + 1].endswith("]"):
            kept[i] = None
            kept[i + 1] = f"[{words[i + 1]:>13}"
    if re.match(r"^[0-9a-f]+\]", words[last]) and last > 0:  # "[mod buildid]"
        kept[last - 1] = f"{kept[last - 1]} {kept[last]}"
        kept[last] = None
        last -= 1
    module = ""
    if kept[last] is not None and re.search(r"\[([^]]+)\]", kept[last]) and last > 0:
        module = kept[last].rstrip(")").lstrip("[").rstrip("]").split(" ")[0]
        symbol = kept[last - 1] or ""
        kept[last - 1] = None
    else:
        symbol = kept[last] or ""
    kept[last] = None
    symbol = symbol.strip("()")
    m = _SYMBOL.match(symbol)
    if m:
        name = m["name"]
        places = " ".join(f"{d}/{name}.{'h' if d == 'include' else 'c'}:{rnd.randrange(1, 999)}"
                          for d in ["include"] * rnd.randrange(0, 3) + ["kernel"])
        symbol = f"{m['seg'] or ''}{name} ({places})"
    # (parse_symbol strips the parentheses even of a word it cannot decode:
    # powerpc's "(unreliable)" comes out as "unreliable")
    return " ".join([w for w in kept if w is not None] + [f"{symbol} {module}"])


def decode(log: str, rnd: random.Random) -> str:
    return "\n".join(decode_line(line, rnd) for line in log.split("\n"))


def test_every_corpus_log_decoded_keeps_its_titles():
    logs = _logs()
    assert len(logs) > 300
    checked = decoded_frames = 0
    for name, log in logs:
        raw = parse_reports(log)
        if not raw:
            continue
        rnd = random.Random(name)
        text = decode(log, rnd)
        got = parse_reports(text)
        assert [_facts(r) for r in got] == [_facts(r) for r in raw], name
        checked += 1
        for before, after in zip(raw, got, strict=True):
            old = [(f.function, f.module) for f in before.details.call_trace]
            new = [(f.function, f.module) for f in after.details.call_trace]
            assert new == old, name
            decoded_frames += sum(1 for f in after.details.call_trace
                                  if f.source and f.source.startswith("kernel/"))
    assert checked > 300 and decoded_frames > 3000


def test_a_decoded_line_is_the_frame_it_was():
    log = "\n".join([
        "[   10.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
        "[   10.000001] RIP: 0010:ext4_map_blocks (fs/ext4/inode.c:600) ",
        "[   10.000002] Call Trace:",
        "[   10.000003] <TASK>",
        "[   10.000004] ? __die_body (arch/x86/kernel/dumpstack.c:478 "
        "arch/x86/kernel/dumpstack.c:420) ",
        "[   10.000005] ext4_map_blocks (include/linux/fs.h:12 (discriminator 2) "
        "fs/ext4/inode.c:600) ext4",
        "[   10.000006] do_writepages (mm/page-writeback.c:2612) ",
        "[   10.000007] </TASK>",
    ])
    [r] = parse_reports(log)
    frames = [(f.function, f.module, f.source, f.reliable) for f in r.details.call_trace]
    assert frames == [
        ("__die_body", None, "arch/x86/kernel/dumpstack.c:420", False),
        ("ext4_map_blocks", "ext4", "fs/ext4/inode.c:600", True),
        ("do_writepages", None, "mm/page-writeback.c:2612", True),
    ]
    assert r.details.ip == "ext4_map_blocks+0x0/0x0"
    assert "ext4_map_blocks" in r.title
