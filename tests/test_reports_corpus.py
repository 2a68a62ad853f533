"""Data-driven test of the report parser against real kernel logs.

The corpus (shared/corpus/kernel-reports, from syzkaller's report tests) has
one log per file with the title, kind (TYPE), guilty frame and corruption
flag syzkaller expects; a file without a title holds no report. We measure
the share of exact titles (TITLE or any ALT), kinds, guilty frames,
corruption flags and correct "no report" verdicts, print it with the misses
by category (pytest -s shows it), and fail when a share drops below its
floor. With KPEEK_WRITE_RESULTS=1 the figures are also written to
bench/results/oops_corpus.txt (a test run must not dirty the checkout).
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corpus import corpus_dir
from kpeek.reports import parse_reports

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "oops_corpus.txt"

# Floors a little under what the parser achieves now (see RESULTS), so a
# regression fails the test.
FLOORS = {"title": 0.99, "kind": 0.98, "frame": 0.99, "corrupted": 0.99, "no-report": 0.94}

# syzkaller's TYPE names -> our kinds (kpeek.reports.kinds.KINDS). syzkaller
# splits sanitizer reports by access direction, which we keep apart from the
# kind (Report.access); "DoS" is its name for fatal faults and panics.
TYPE_TO_KIND = {
    "HANG": "hang",
    "DoS": "crash",
    "WARNING": "warning",
    "LOCKDEP": "lockdep",
    "BUG": "bug",
    "MEMORY_SAFETY_BUG": "bad-access",
    "NULL-POINTER-DEREFERENCE": "null-deref",
    "KASAN-NULL-POINTER-DEREFERENCE-READ": "null-deref",
    "KASAN-NULL-POINTER-DEREFERENCE-WRITE": "null-deref",
    "KASAN-USE-AFTER-FREE-READ": "use-after-free",
    "KASAN-USE-AFTER-FREE-WRITE": "use-after-free",
    "KFENCE-USE-AFTER-FREE-READ": "use-after-free",
    "KFENCE-USE-AFTER-FREE-WRITE": "use-after-free",
    "KMSAN-USE-AFTER-FREE-READ": "use-after-free",
    "KASAN-READ": "invalid-access",
    "KASAN-WRITE": "invalid-access",
    "KFENCE-READ": "invalid-access",
    "KFENCE-WRITE": "invalid-access",
    "MEMORY_SAFETY_UBSAN": "invalid-access",
    "KASAN-INVALID-FREE": "invalid-free",
    "KFENCE-INVALID-FREE": "invalid-free",
    "KFENCE-MEMORY-CORRUPTION": "memory-corruption",
    "KMSAN-UNINIT-VALUE": "uninit-value",
    "KMSAN-INFO-LEAK": "info-leak",
    "KCSAN-DATARACE": "data-race",
    "KCSAN-ASSERT": "data-race",
    "UBSAN": "undefined-behaviour",
    "LEAK": "memory-leak",
    "ATOMIC_SLEEP": "atomic-sleep",
    "REFCOUNT_WARNING": "refcount",
    "SYZ_FAILURE": "tool-failure",
    "REBOOT": "reboot",
}

# How syzkaller derives the guilty frame from a title ("... in FUNC").
_TITLE_FRAME = re.compile(r".* in ((?:<[a-zA-Z0-9_: ]+>)?[a-zA-Z0-9_:]+)")


@dataclass
class Case:
    name: str
    log: str
    title: str
    alts: list[str] = field(default_factory=list)
    type: str | None = None
    frame: str | None = None
    corrupted: bool = False


def load_case(path: Path) -> Case:
    """Headers (TITLE/ALT/TYPE/FRAME/CORRUPTED ...), a blank line, the log.

    A trailing "REPORT:" section (syzkaller's expected report text) is not
    part of the log.
    """
    data = path.read_bytes().decode("utf-8", "surrogateescape")
    head, _, log = data.partition("\n\n")
    log = log.split("\nREPORT:\n", 1)[0]
    case = Case(path.name, log, "")
    for line in head.split("\n"):
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "TITLE":
            case.title = value
        elif key == "ALT":
            case.alts.append(value)
        elif key == "TYPE":
            case.type = value
        elif key == "FRAME":
            case.frame = value
        elif key == "CORRUPTED":
            case.corrupted = value == "Y"
    if case.frame is None and case.title:
        m = _TITLE_FRAME.match(case.title)
        case.frame = m.group(1) if m else None
    if case.frame == "corrupted":
        case.frame = ""  # syzkaller's word for "no frame could be found"
    return case


def evaluate(cases: list[Case]) -> tuple[dict[str, list[int]], dict[str, list[str]], float]:
    """Per metric [hits, total], misses per category, and the parse CPU time in seconds.

    CPU time, not wall time: the test machine is shared and its wall clock
    says more about the neighbours than about the parser.
    """
    scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: dict[str, list[str]] = defaultdict(list)
    elapsed = 0.0
    for case in cases:
        start = time.process_time()
        reports = parse_reports(case.log)
        elapsed += time.process_time() - start
        first = reports[0] if reports else None

        def score(metric: str, ok: bool, detail: str, name: str = case.name) -> None:
            scores[metric][1] += 1
            if ok:
                scores[metric][0] += 1
            else:
                misses[metric].append(f"{name}: {detail}")

        if not case.title:
            score("no-report", first is None,
                  f"expected no report, got {first.title!r}" if first else "")
            continue
        got = first.title if first else "(no report)"
        score("title", got == case.title or got in case.alts,
              f"expected {case.title!r}, got {got!r}")
        if case.type:
            want = TYPE_TO_KIND.get(case.type, "unknown")
            kind = first.kind if first else None
            score("kind", kind == want, f"{case.type} -> {want}, got {kind} ({got!r})")
        if case.frame is not None:
            frame = (first.guilty_frame or "") if first else None
            score("frame", frame == case.frame, f"expected {case.frame!r}, got {frame!r}")
        corrupted = first.corrupted if first else None
        reason = f" ({first.corrupted_reason})" if first and first.corrupted_reason else ""
        score("corrupted", corrupted == case.corrupted,
              f"expected corrupted={case.corrupted}, got {corrupted}{reason}")
    return scores, misses, elapsed


def render(scores, misses, elapsed: float, count: int) -> str:
    lines = [f"kpeek oops corpus: {count} logs, parsed in {elapsed:.2f} s of CPU time", ""]
    names = {"title": "exact titles (TITLE or ALT)", "kind": "kinds", "frame": "guilty frames",
             "corrupted": "corruption flags", "no-report": "logs without a report judged so"}
    for metric, label in names.items():
        hits, total = scores[metric]
        share = hits / total if total else 1.0
        lines.append(f"  {label:<34} {hits:>4}/{total:<4} {100 * share:6.2f}%"
                     f"   (floor {100 * FLOORS[metric]:.0f}%)")
    for metric in names:
        if misses[metric]:
            lines += ["", f"misses: {names[metric]}"]
            lines += [f"  {m}" for m in misses[metric]]
    return "\n".join(lines) + "\n"


def test_corpus_accuracy():
    root = corpus_dir()
    if root is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kernel report corpus not found (shared/corpus/kernel-reports"
                        " beside the repository, or $KPEEK_CORPUS)")
        pytest.skip("kernel report corpus not found")
    cases = [load_case(p) for p in sorted(root.iterdir(), key=lambda p: p.name)
             if p.is_file() and not p.name.startswith("README")]
    assert len(cases) > 100, f"corpus at {root} looks incomplete"
    scores, misses, elapsed = evaluate(cases)
    report = render(scores, misses, elapsed, len(cases))
    print("\n" + report)
    if os.environ.get("KPEEK_WRITE_RESULTS") == "1":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)
    for metric, floor in FLOORS.items():
        hits, total = scores[metric]
        assert total > 0, f"no corpus cases for {metric}"
        assert hits / total >= floor, f"{metric}: {hits}/{total} below the floor {floor}"
