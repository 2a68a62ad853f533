"""Fuzz the log reader: thousands of mutants of the real corpus logs (bit flips,
cut and doubled lines, spliced reports, report markers in odd places, huge
lines, binary junk) through both the one-piece parser and the stream reader.
Nothing may raise; memory stays bounded. Seeded, so a failure reproduces."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import pytest

from corpus import corpus_logs
from kpeek.errors import UsageError
from kpeek.reports.parse import parse_log
from kpeek.reports.stream import parse_stream

MUTANTS = 2000
STREAM_EVERY = 4  # the stream reader (64 KiB windows) on every 4th mutant
SEED = 20261202
MARKERS = [b"BUG: ", b"WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n", b"Oops: int3: 0000 [#1]\n",
           b"Kernel panic - not syncing: ", b"INFO: task a:1 blocked for more than 9 seconds.\n",
           b"Call Trace:\n", b" <TASK>\n", b"RIP: 0010:", b"Code: ", b"<", b"[ 1.0][ T1] ",
           b"goroutine 1 [running]:\n", b"panic: ", b"==================\n", b"_Z3fooi+0x1/0x2\n"]


def _logs() -> list[bytes]:
    return corpus_logs()


def mutate(rnd: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """One to four random edits of ``data``."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(9)
        pos = rnd.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip bits
            for _ in range(rnd.randint(1, 16)):
                i = rnd.randrange(len(buf))
                buf[i] ^= 1 << rnd.randrange(8)
        elif op == 1:  # cut the log short
            del buf[pos:]
        elif op == 2:  # drop a stretch
            del buf[pos:pos + rnd.randint(1, 2000)]
        elif op == 3:  # repeat a stretch (a console that printed twice)
            end = min(len(buf), pos + rnd.randint(1, 4000))
            buf[end:end] = buf[pos:end]
        elif op == 4:  # splice in part of another log
            other = rnd.choice(others)
            a = rnd.randrange(len(other) + 1)
            buf[pos:pos] = other[a:a + rnd.randint(1, 3000)]
        elif op == 5:  # a report marker anywhere
            buf[pos:pos] = rnd.choice(MARKERS)
        elif op == 6:  # a huge line
            buf[pos:pos] = bytes([rnd.randrange(32, 127)]) * rnd.randint(1000, 200_000)
        elif op == 7:  # binary junk
            buf[pos:pos] = rnd.randbytes(rnd.randint(1, 512))
        else:  # many short lines
            buf[pos:pos] = b"\n" * rnd.randint(1, 5000)
    return bytes(buf)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


@pytest.mark.timeout(300)
def test_fuzzed_logs_never_raise():
    logs = _logs()
    rnd = random.Random(SEED)
    before = _rss_kb()
    start = time.monotonic()
    refused = reports = 0
    for i in range(MUTANTS):
        data = mutate(rnd, rnd.choice(logs), logs)
        try:
            whole = parse_log(data.decode("utf-8", "surrogateescape"))
            reports += len(whole.reports)
            for r in whole.reports:  # every report is complete enough to show
                assert r.title and r.end_line >= r.start_line
        except Exception as e:  # pragma: no cover - the point of the test
            raise AssertionError(f"mutant {i} (seed {SEED}): parse_log raised {e!r}") from e
        if i % STREAM_EVERY:
            continue
        try:
            parse_stream(io.BytesIO(data), "fuzz", chunk=1 << 16)
        except UsageError:
            refused += 1  # binary enough to refuse: a one-line error, fine
        except Exception as e:  # pragma: no cover
            raise AssertionError(f"mutant {i} (seed {SEED}): parse_stream raised {e!r}") from e
    took = time.monotonic() - start
    grown = _rss_kb() - before
    print(f"{MUTANTS} mutants in {took:.1f} s, {reports} reports, {refused} refused, "
          f"RSS +{grown} KB")
    assert grown < 100 * 1024, f"memory grew by {grown} KB"
    assert reports > MUTANTS // 2  # the mutants still hold reports: the parser was exercised
