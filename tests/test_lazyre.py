"""Lazily compiled patterns (kpeek.lazyre) answer as re.compile does."""

from __future__ import annotations

import re

from corpus import corpus_logs
from kpeek import lazyre
from kpeek.reports import console, describe, details, parse, table


def _report_patterns() -> list[str]:
    """Every lazy pattern of the report modules and the report kind table."""
    found: set[str] = set()
    for module in (console, describe, details, parse, table):
        for value in vars(module).values():
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                item = item[0] if isinstance(item, tuple) and item else item
                if isinstance(item, lazyre.Lazy):
                    found.add(item.pattern)
    for kind in table.REPORT_KINDS:
        for fmt in kind.formats:
            found.add(fmt.title.pattern)
            found.update(step.pattern.pattern for step in fmt.report)
    return sorted(found)


def test_literal_prefixes():
    cases = {
        "BUG: KASAN:": "BUG: KASAN:",
        "ab*c": "a",  # the quantifier makes "b" optional
        "abc|d": "",  # a top-level alternative needs no "abc"
        "abc(?:x|y)": "abc",
        "ab[|]c|d": "",
        "ab[]|]c": "ab",  # "]" first in a class is a member; the "|" is in the class
        "a[^]|x]|b": "",
        r"ab\|c": "ab",
        "(?i)abc": "",
        "x{2}": "",
        "WARNING: CPU: [0-9]+ PID": "WARNING: CPU: ",
    }
    for pattern, prefix in cases.items():
        assert lazyre.literal_prefix(pattern) == prefix, pattern


def test_lazy_patterns_match_as_compiled_ones_over_the_corpus():
    patterns = _report_patterns()
    assert len(patterns) > 200
    lines = sorted({line for log in corpus_logs()[::8]
                    for line in log.decode("utf-8", "replace").splitlines()})
    assert len(lines) > 1000
    for pattern in patterns:
        # Each lazy answers from its literal prefix until a line holds it.
        compiled = re.compile(pattern)
        searched, matched = lazyre.lazy(pattern), lazyre.lazy(pattern)
        for line in lines:
            a, b = compiled.search(line), searched.search(line)
            assert (a and (a.span(), a.groups())) == (b and (b.span(), b.groups())), pattern
            a, b = compiled.match(line), matched.match(line)
            assert (a and (a.span(), a.groups())) == (b and (b.span(), b.groups())), pattern
