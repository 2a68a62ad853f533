"""Fuzz the log reader: thousands of mutants of the real corpus logs (bit flips,
cut and doubled lines, spliced reports, report markers in odd places, huge
lines, binary junk) through both the one-piece parser and the stream reader.
Nothing may raise; memory stays bounded. Seeded, so a failure reproduces.
In process, one mutant after another: the cost is the parser's (about 6 ms of
CPU per 30 KiB mutant here); bench/bench_fuzz.py runs 5,000 and measures."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from corpus import corpus_logs
from mutants import mutate, read_mutant

MUTANTS = 3000
STREAM_EVERY = 4  # the stream reader (64 KiB windows) on every 4th mutant
SEED = 20261202
CPU_BUDGET_S = 60  # "a few thousand mutants in under a minute", in CPU time (load-proof)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


@pytest.mark.timeout(300)
def test_fuzzed_logs_never_raise():
    logs = corpus_logs()
    rnd = random.Random(SEED)
    before = _rss_kb()
    start, cpu = time.monotonic(), time.process_time()
    refused = reports = 0
    for i in range(MUTANTS):
        data = mutate(rnd, rnd.choice(logs), logs)
        try:
            found, binary = read_mutant(data, stream=i % STREAM_EVERY == 0)
        except Exception as e:  # pragma: no cover - the point of the test
            raise AssertionError(f"mutant {i} (seed {SEED}) raised {e!r}") from e
        reports += found
        refused += binary
    took, cpu = time.monotonic() - start, time.process_time() - cpu
    grown = _rss_kb() - before
    print(
        f"{MUTANTS} mutants in {took:.1f} s ({cpu:.1f} s CPU), {reports} reports, "
        f"{refused} refused, RSS +{grown} KB"
    )
    assert grown < 100 * 1024, f"memory grew by {grown} KB"
    assert reports > MUTANTS // 2  # the mutants still hold reports: the parser was exercised
    assert cpu < CPU_BUDGET_S, f"{MUTANTS} mutants took {cpu:.0f} s of CPU"
