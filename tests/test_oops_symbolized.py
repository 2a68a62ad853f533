"""Symbolized logs keep syzbot's titles: the ``file:line`` after an offset and the
``[inline]`` lines syzkaller's symbolizer adds are left out of the title and the
guilty frame, and kept in the frame list.

syzkaller symbolizes a frame ``f+0x1c/0x90`` as ``f+0x1c/0x90 net/x.c:12`` and
puts each function inlined there on a line of its own before it, with the same
prefix (a stack line, or a header such as ``BUG: KASAN: ... in ``):
``g include/linux/y.h:34 [inline]``. syzbot titles the log before that, so the
raw corpus log and its symbolized form must get the same title.
"""

from __future__ import annotations

import random
import re

import pytest

from corpus import corpus_dir, require_corpus
from kpeek.reports import parse_reports

_FRAME = re.compile(r"^(?P<prefix>.*?)(?P<func>[A-Za-z_][A-Za-z0-9_.]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                    r"(?: \[[A-Za-z0-9_]+\])?\s*$")


def symbolize(log: str, rnd: random.Random) -> str:
    """``log`` as syzkaller's symbolizer writes it (made-up files and lines)."""
    out = []
    for line in log.split("\n"):
        m = _FRAME.match(line)
        if not m or "Code:" in line:
            out.append(line)
            continue
        func = m["func"].split(".")[0]
        if rnd.random() < 0.5:  # 1-3 functions inlined at this place, callee first
            for k in range(rnd.randrange(1, 4)):
                out.append(f"{m['prefix']}inl{k}_{func} include/linux/{func}.h:"
                           f"{rnd.randrange(10, 900)} [inline]")
        out.append(f"{line.rstrip()} net/{func}.c:{rnd.randrange(10, 3000)}")
    return "\n".join(out)


def _logs() -> list[tuple[str, str]]:
    root = require_corpus()
    out = []
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if not path.is_file() or path.name.startswith("README"):
            continue
        head, _, log = path.read_bytes().decode("utf-8", "surrogateescape").partition("\n\n")
        if "TITLE:" in head and "[inline]" not in log:
            out.append((path.name, log.split("\nREPORT:\n", 1)[0]))
    return out


def _facts(r) -> tuple:
    return r.title, r.kind, r.guilty_frame, r.corrupted, r.corrupted_reason


def test_every_corpus_log_symbolized_keeps_its_titles():
    logs = _logs()
    assert len(logs) > 300
    checked = inline = sourced = plain = 0
    for name, log in logs:
        raw = parse_reports(log)
        if not raw:
            continue
        text = symbolize(log, random.Random(name))
        symbolized = parse_reports(text)
        assert [_facts(r) for r in symbolized] == [_facts(r) for r in raw], name
        checked += 1
        # The inline functions are in the frame list, with their source place.
        frames = [f for r in symbolized for f in r.details.call_trace]
        shown = [f for f in frames if f.inline]
        inline += len(shown)
        assert all(f.source and f.source.startswith("include/linux/") for f in shown), name
        sourced += sum(1 for f in frames if f.source and not f.inline)
        plain += sum(1 for f in frames if not f.inline)
    assert checked > 300 and inline > 1000
    # (this symbolizer leaves a few odd lines alone, arm64's "f+0x1/0x2 (T)" ones)
    assert sourced > 0.95 * plain


def test_a_real_symbolized_report():
    """Corpus log 400 is symbolized by syzkaller: its inline frames are listed,
    its title is syzbot's."""
    root = corpus_dir()
    if root is None or not (root / "400").exists():
        require_corpus()
        pytest.skip("corpus log 400 not in this corpus")
    log = (root / "400").read_text().partition("\n\n")[2]
    (r,) = parse_reports(log)
    assert r.title == "WARNING in blk_sync_queue" and r.guilty_frame == "blk_sync_queue"
    names = [(f.function, f.source, f.inline) for f in r.details.call_trace]
    assert names[0] == ("__dump_stack", "lib/dump_stack.c:77", True)
    assert names[1] == ("dump_stack", "lib/dump_stack.c:113", False)
    assert ("kref_put", "include/linux/kref.h:70", True) in names
    kref = names.index(("kref_put", "include/linux/kref.h:70", True))
    assert names[kref + 1][0] == "kobject_put.cold"  # inlined into the frame below it


def test_a_symbolized_kasan_header_with_inlined_functions():
    """The header line itself symbolized: one copy per inlined function first."""
    log = "\n".join([
        "[   80.1] ==================================================================",
        "[   80.2] BUG: KASAN: slab-out-of-bounds in memcpy include/linux/string.h:353 [inline]",
        "[   80.2] BUG: KASAN: slab-out-of-bounds in skb_put_data include/linux/skbuff.h:2404"
        " [inline]",
        "[   80.2] BUG: KASAN: slab-out-of-bounds in hci_rx+0x2d/0x330 net/bluetooth/hci.c:260",
        "[   80.3] Write of size 88 at addr ffff8801d818fe98 by task kworker/0:1/4078",
        "[   80.4] CPU: 1 PID: 4078 Comm: kworker/0:1 Not tainted 6.1.0 #1",
        "[   80.5] Call Trace:",
        "[   80.5]  __dump_stack lib/dump_stack.c:77 [inline]",
        "[   80.5]  dump_stack+0x172/0x1f0 lib/dump_stack.c:113",
        "[   80.6]  kasan_report+0x12/0x20 mm/kasan/report.c:400",
        "[   80.6]  memcpy include/linux/string.h:353 [inline]",
        "[   80.6]  skb_put_data include/linux/skbuff.h:2404 [inline]",
        "[   80.6]  hci_rx+0x2d/0x330 net/bluetooth/hci.c:260",
        "[   80.7]  process_one_work+0x98e/0x1760 kernel/workqueue.c:2153",
        "",
    ])
    (r,) = parse_reports(log)
    assert r.title == "KASAN: slab-out-of-bounds Write in hci_rx"
    assert r.start_line == 1 and not r.corrupted
    trace = [(f.function, f.inline) for f in r.details.call_trace]
    assert trace == [("__dump_stack", True), ("dump_stack", False), ("kasan_report", False),
                     ("memcpy", True), ("skb_put_data", True), ("hci_rx", False),
                     ("process_one_work", False)]
