"""Benchmark: the whole kernel report corpus, in one process.

First the command a user runs: ``kpeek oops FILE...`` over all corpus files
in one new process (text and --json), timed against ``python3 -c pass``
(the same interpreter) in turn, best of N by CPU seconds (user + system:
steadier than wall time on a shared machine) and wall seconds; once over
the files as they are (headers and syzkaller's expected REPORT: copies
included), once over the 373 logs alone (headers stripped, written to a
temporary folder). Target: under 1 s. Then ``parse_reports`` in-process
over every log several times: best and median total, the slowest single
logs, and the throughput on a large synthetic console log. Prints a table
and writes bench/results/bench_oops.txt.

    .venv/bin/python bench/bench_oops.py [--rounds N] [--corpus DIR]

Run with PYTHONDONTWRITEBYTECODE unset, as an installed kpeek has its
bytecode compiled.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from corpus import corpus_dir  # noqa: E402  (the tests' lookup: $KPEEK_CORPUS, shared/)
from kpeek.reports import parse_reports  # noqa: E402

RESULTS = REPO / "bench" / "results" / "bench_oops.txt"
TARGET_SECONDS = 2.0
CLI_TARGET_SECONDS = 1.0


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU seconds) of one run of ``cmd``, output thrown away."""
    start = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=[
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {shlex.join(cmd[:6])} ...")
    return wall, usage.ru_utime + usage.ru_stime


def cli_rows(files: list[Path], logs: list[tuple[str, str]], repeat: int) -> list[str]:
    """One kpeek process over every file, against python3 -c pass, in turn."""
    with tempfile.TemporaryDirectory(prefix="kpeek-bench-oops-") as tmp:
        bare = []
        for name, log in logs:
            path = Path(tmp) / name
            path.write_bytes(log.encode("utf-8", "surrogateescape"))
            bare.append(str(path))
        kpeek = [sys.executable, "-m", "kpeek", "oops"]
        cmds = [
            ("python3 -c pass (the same interpreter)", [sys.executable, "-c", "pass"]),
            (f"kpeek oops CORPUS/* ({len(files)} files as they are)",
             [*kpeek, *map(str, files)]),
            (f"kpeek oops --json CORPUS/* ({len(files)} files)",
             [*kpeek, "--json", *map(str, files)]),
            (f"kpeek oops LOGS/* ({len(bare)} logs, headers stripped)", [*kpeek, *bare]),
        ]
        walls: dict[str, list[float]] = {name: [] for name, _ in cmds}
        cpus: dict[str, list[float]] = {name: [] for name, _ in cmds}
        for _ in range(repeat):
            for name, cmd in cmds:
                w, c = run(cmd)
                walls[name].append(w)
                cpus[name].append(c)
    lines = [f"one process over the whole corpus, best of {repeat} (target: under "
             f"{CLI_TARGET_SECONDS:.0f} s)",
             f"  {'command':<56} {'CPU s':>7} {'wall s':>7}"]
    for name, _ in cmds:
        lines.append(f"  {name:<56} {min(cpus[name]):>7.3f} {min(walls[name]):>7.3f}")
    worst = max(min(cpus[name]) for name, _ in cmds[1:])
    lines.append(f"  target: every row under {CLI_TARGET_SECONDS:.0f} s of CPU -> "
                 + ("met" if worst < CLI_TARGET_SECONDS else "NOT met"))
    return lines


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
    ap.add_argument("--corpus", type=Path, default=corpus_dir())
    args = ap.parse_args()
    if args.corpus is None or not args.corpus.is_dir():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    logs = load_logs(args.corpus)
    size = sum(len(log) for _, log in logs)
    files = sorted((p for p in args.corpus.iterdir()
                    if p.is_file() and not p.name.startswith("README")), key=lambda p: p.name)
    cli = cli_rows(files, logs, max(3, args.rounds))

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
        *cli,
        "",
        "in one process: parse_reports() over each log (no output)",
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
        f"target: parsing the whole corpus under {TARGET_SECONDS:.0f} s -> "
        + ("met" if min(totals) < TARGET_SECONDS else "NOT met"),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
