"""Fuzz the kernel log reader at length: N seeded mutants of the real corpus
logs (tests/mutants.py, the same edits as the CI fuzz test), each through the
one-piece parser and the stream reader, in this process; every --cli-every'th
one also through `kpeek oops FILE` as a user runs it (exit 0 or 2, never a
traceback); and one large log (--big-mb of mutants back to back) through
`kpeek oops -` on stdin. Peak memory: ru_maxrss of this
process, VmHWM of each kpeek run (tests/peakmem.py). The unmutated corpus is
parsed in the same run as the baseline.

    .venv/bin/python bench/bench_fuzz.py --mutants 5000
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import corpus_logs  # noqa: E402
from mutants import mutate, read_mutant  # noqa: E402
from peakmem import wait_with_peak  # noqa: E402

SEED = 20261202
KPEEK = [sys.executable, "-m", "kpeek"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def cli_run(args: list[str], stdin: Path | None = None) -> tuple[str | None, float]:
    """(None when kpeek answered as it should: exit 0, or 2 with one line; else
    why not, and the run's peak memory in MB (VmHWM, see tests/peakmem.py)."""
    with tempfile.TemporaryFile() as err, open(stdin or os.devnull, "rb") as inp:
        proc = subprocess.Popen([*KPEEK, *args], stdin=inp, stdout=subprocess.DEVNULL, stderr=err)
        rss = wait_with_peak(proc, every=0.02) / 1024
        err.seek(0)
        text = err.read().decode(errors="replace")
    why = None
    if proc.returncode not in (0, 2) or "Traceback" in text:
        why = f"kpeek {' '.join(args)} exit {proc.returncode}: {text.strip()[-300:]}"
    elif proc.returncode == 2 and len(text.strip().splitlines()) != 1:
        why = f"kpeek {' '.join(args)} exit 2 with {len(text.splitlines())} lines: {text[-300:]}"
    return why, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=5000)
    ap.add_argument("--cli-every", type=int, default=50)
    ap.add_argument("--big-mb", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "bench/results/bench_fuzz.txt"))
    args = ap.parse_args()

    logs = corpus_logs()
    read_mutant(logs[0], stream=True)  # imports and compiled patterns out of the timing
    base_rss = _maxrss_mb(resource.RUSAGE_SELF)
    t0, c0 = time.monotonic(), _cpu()
    for log in logs:
        read_mutant(log, stream=True)
    base_wall, base_cpu = time.monotonic() - t0, _cpu() - c0
    corpus_kib = sum(map(len, logs)) / 1024

    rnd = random.Random(SEED)
    failures: list[str] = []
    reports = refused = cli_runs = size = big_size = 0
    cli_peak = 0.0
    t0, c0, cc0 = time.monotonic(), _cpu(), _children_cpu()
    with tempfile.TemporaryDirectory(prefix="kpeek-fuzz-") as tmp:
        big = Path(tmp) / "big.log"
        with big.open("wb") as big_out:  # on disk: the harness keeps no big log in memory
            for i in range(args.mutants):
                data = mutate(rnd, rnd.choice(logs), logs)
                size += len(data)
                if big_size < args.big_mb << 20:
                    big_out.write(data)
                    big_size += len(data)
                try:
                    found, binary = read_mutant(data, stream=True)
                    reports += found
                    refused += binary
                except Exception:
                    failures.append(f"mutant {i}: {traceback.format_exc(limit=3)}")
                if args.cli_every and i % args.cli_every == 0:
                    path = Path(tmp) / "mutant.log"
                    path.write_bytes(data)
                    cli_runs += 1
                    why, rss = cli_run(["oops", str(path)])
                    cli_peak = max(cli_peak, rss)
                    if why:
                        failures.append(f"mutant {i}: {why}")
        wall, cpu = time.monotonic() - t0, _cpu() - c0
        peak_rss = _maxrss_mb(resource.RUSAGE_SELF)
        cli_cpu = _children_cpu() - cc0
        t1 = time.monotonic()
        why, big_rss = cli_run(["oops", "-"], stdin=big) if big_size else (None, 0.0)
        big_wall = time.monotonic() - t1
        if why:
            failures.append(f"big log: {why}")

    mutant_kib = size / 1024
    lines = [
        f"bench/bench_fuzz.py --mutants {args.mutants} --cli-every {args.cli_every} "
        f"--big-mb {args.big_mb} (seed {SEED})",
        f"baseline, same run: the {len(logs)} corpus logs ({corpus_kib:.0f} KiB) through both "
        f"readers in {base_wall:.1f} s, {base_cpu:.1f} s CPU "
        f"({1e6 * base_cpu / corpus_kib:.0f} µs CPU/KiB)",
        f"{args.mutants} mutants ({mutant_kib / 1024:.0f} MiB) through parse_log and the stream "
        f"reader: {wall:.1f} s, {cpu:.1f} s CPU ({1e6 * cpu / mutant_kib:.0f} µs CPU/KiB, "
        f"{1e3 * cpu / args.mutants:.1f} ms/mutant); {reports} reports, {refused} refused as "
        "binary",
        f"{cli_runs} of them through `kpeek oops FILE` too: {cli_cpu:.1f} s CPU",
        f"one {big_size >> 20} MiB log of mutants through `kpeek oops -`: {big_wall:.1f} s, "
        f"peak {big_rss:.0f} MB",
        f"peak memory: this process {peak_rss:.0f} MB ru_maxrss (corpus loaded: "
        f"{base_rss:.0f} MB); largest `kpeek oops FILE` run {cli_peak:.0f} MB VmHWM",
        f"tracebacks or wrong exits: {len(failures)}",
        *[f"  {f.strip()}" for f in failures[:10]],
    ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    Path(args.out).write_text(report)
    return 1 if failures or max(peak_rss, cli_peak, big_rss) >= 100 else 0


if __name__ == "__main__":
    raise SystemExit(main())
