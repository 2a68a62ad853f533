"""Benchmark: parse the whole kernel report corpus (target: under 2 s in total).

Runs ``parse_reports`` over every corpus log several times and reports the
best and median total, the slowest single logs, and the throughput on a
large synthetic console log. Prints a table and writes
bench/results/bench_oops.txt.

    .venv/bin/python bench/bench_oops.py [--rounds N] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kpeek.reports import parse_reports  # noqa: E402

RESULTS = REPO / "bench" / "results" / "bench_oops.txt"
TARGET_SECONDS = 2.0


def load_logs(root: Path) -> list[tuple[str, str]]:
    logs = []
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if not path.is_file() or path.name.startswith("README"):
            continue
        data = path.read_bytes().decode("utf-8", "surrogateescape")
        log = data.partition("\n\n")[2].split("\nREPORT:\n", 1)[0]
        logs.append((path.name, log))
    return logs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get(
        "KPEEK_CORPUS", REPO.parent / "shared" / "corpus" / "kernel-reports")))
    args = ap.parse_args()
    if not args.corpus.is_dir():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    logs = load_logs(args.corpus)
    size = sum(len(log) for _, log in logs)

    # First round in a fresh process includes compiling the table's regexes.
    totals, cpu_totals = [], []
    per_log: dict[str, float] = {}
    for _ in range(args.rounds):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for name, log in logs:
            t = time.perf_counter()
            parse_reports(log)
            per_log[name] = min(per_log.get(name, 1e9), time.perf_counter() - t)
        totals.append(time.perf_counter() - wall0)
        cpu_totals.append(time.process_time() - cpu0)

    noise = "[  123.456789] usb 1-1: new high-speed USB device number 2 using xhci_hcd\n"
    report = "[  200.0] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n"
    big = noise * ((20 << 20) // len(noise)) + report
    t = time.perf_counter()
    found = parse_reports(big)
    big_seconds = time.perf_counter() - t

    mean_log = sum(per_log.values()) / len(logs)
    slowest = sorted(per_log.items(), key=lambda kv: -kv[1])[:5]
    lines = [
        f"kpeek oops parser benchmark ({len(logs)} corpus logs, {size / 1e6:.1f} MB,"
        f" {args.rounds} rounds, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})",
        "",
        f"{'measure':<40} {'value':>12}",
        f"{'corpus total, first round (wall)':<40} {totals[0]:>10.3f} s",
        f"{'corpus total, best round (wall)':<40} {min(totals):>10.3f} s",
        f"{'corpus total, median round (wall)':<40} {statistics.median(totals):>10.3f} s",
        f"{'corpus total, best round (CPU)':<40} {min(cpu_totals):>10.3f} s",
        f"{'per log, mean (best of rounds)':<40} {1e3 * mean_log:>9.2f} ms",
        f"{'20 MiB console noise + 1 report':<40} {big_seconds:>10.3f} s"
        f"  ({len(big) / 1e6 / big_seconds:.0f} MB/s, {len(found)} report)",
        "",
        "slowest logs (best of rounds):",
        *(f"  {name:<10} {1e3 * sec:8.2f} ms" for name, sec in slowest),
        "",
        f"target: whole corpus under {TARGET_SECONDS:.0f} s -> "
        + ("met" if min(totals) < TARGET_SECONDS else "NOT met"),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
