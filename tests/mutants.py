"""Seeded mutants of real kernel logs for fuzzing the log reader: bit flips,
cut and doubled stretches, spliced reports, report markers in odd places,
huge lines, binary junk, runs of empty lines. Shared by the CI fuzz test and
bench/bench_fuzz.py, so both fuzz the same way."""

from __future__ import annotations

import random

MARKERS = [
    b"BUG: ",
    b"WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n",
    b"Oops: int3: 0000 [#1]\n",
    b"Kernel panic - not syncing: ",
    b"INFO: task a:1 blocked for more than 9 seconds.\n",
    b"Call Trace:\n",
    b" <TASK>\n",
    b"RIP: 0010:",
    b"Code: ",
    b"<",
    b"[ 1.0][ T1] ",
    b"goroutine 1 [running]:\n",
    b"panic: ",
    b"==================\n",
    b"_Z3fooi+0x1/0x2\n",
]


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
            del buf[pos : pos + rnd.randint(1, 2000)]
        elif op == 3:  # repeat a stretch (a console that printed twice)
            end = min(len(buf), pos + rnd.randint(1, 4000))
            buf[end:end] = buf[pos:end]
        elif op == 4:  # splice in part of another log
            other = rnd.choice(others)
            a = rnd.randrange(len(other) + 1)
            buf[pos:pos] = other[a : a + rnd.randint(1, 3000)]
        elif op == 5:  # a report marker anywhere
            buf[pos:pos] = rnd.choice(MARKERS)
        elif op == 6:  # a huge line
            buf[pos:pos] = bytes([rnd.randrange(32, 127)]) * rnd.randint(1000, 200_000)
        elif op == 7:  # binary junk
            buf[pos:pos] = rnd.randbytes(rnd.randint(1, 512))
        else:  # many short lines
            buf[pos:pos] = b"\n" * rnd.randint(1, 5000)
    return bytes(buf)


def read_mutant(data: bytes, stream: bool) -> tuple[int, bool]:
    """Run one mutant through parse_log (and, with ``stream``, the stream reader
    in 64 KiB windows): (reports found, refused as binary). Any exception but
    the stream reader's one-line refusal propagates: that is a failure."""
    import io

    from kpeek.errors import UsageError
    from kpeek.reports.parse import parse_log
    from kpeek.reports.stream import parse_stream

    whole = parse_log(data.decode("utf-8", "surrogateescape"))
    for r in whole.reports:  # every report is complete enough to show
        if not r.title or r.end_line < r.start_line:
            raise AssertionError(f"incomplete report {r.title!r} {r.start_line}-{r.end_line}")
    if not stream:
        return len(whole.reports), False
    try:
        parse_stream(io.BytesIO(data), "fuzz", chunk=1 << 16)
    except UsageError:
        return len(whole.reports), True  # binary enough to refuse: one line, fine
    return len(whole.reports), False
