"""Soak: N whole-system snapshots per source under bounded fork/exit churn.

Counts what the issue's goal names: tracebacks (an exception out of a
snapshot, or a traceback / unexpected exit status from the CLI), inconsistent
documents (a reference that does not resolve: in every snapshot, and in the
files --json document of every CLI run), hangs (one snapshot taking longer than --hang seconds) and
new kernel messages (/dev/kmsg records logged during the run).

Sources run side by side, each in --jobs worker processes (a snapshot is one
process's work; the machine has 2 CPUs). Every --cli-every'th snapshot is a
real `kpeek files --json --source S` run, as a user would start it.

    sudo .venv/bin/python bench/soak.py --snapshots 1000 --jobs 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from churn import (  # noqa: E402
    BPF_PROGRAM,
    KERNEL_REPORT,
    Churn,
    dangling,
    dangling_in_document,
    kmsg_records,
)


def _in_process(source: str) -> tuple[list[str], int]:
    # The snapshot itself is checked here; its files --json document in the
    # CLI runs (building one for 5,000 processes costs more than the snapshot).
    from kpeek.sources import take_snapshot

    snap = take_snapshot(source)
    return dangling(snap), snap.vanished


def _cli(source: str) -> tuple[list[str], int]:
    run = subprocess.run(
        [sys.executable, "-m", "kpeek", "files", "--json", "--source", source],
        capture_output=True,
        timeout=3600,
    )
    if run.returncode != 0 or b"Traceback" in run.stderr:
        raise RuntimeError(f"kpeek files exit {run.returncode}: {run.stderr[-400:]!r}")
    doc = json.loads(run.stdout)
    return dangling_in_document(doc), doc["vanished"]


def _worker(source: str, rounds: range, cli_every: int, until: float, out: mp.Queue) -> None:
    for i in rounds:
        if time.monotonic() > until:  # out of time: what was done is reported
            break
        out.put(("start", source, i, time.monotonic()))
        t0 = time.monotonic()
        try:
            take = _cli if cli_every and i % cli_every == 0 else _in_process
            bad, vanished = take(source)
            out.put(("done", source, i, time.monotonic() - t0, bad[:5], vanished))
        except Exception:
            out.put(("error", source, i, time.monotonic() - t0, traceback.format_exc(limit=4)))
    out.put(("exit", source, -1, 0.0))


WORKER_PIDS: set[int] = set()  # for telling kernel messages about them


class Tally:
    def __init__(self) -> None:
        self.done = self.inconsistent = self.errors = self.hangs = self.vanished = 0
        self.slowest = 0.0
        self.examples: list[str] = []


def soak(
    sources: list[str], n: int, jobs: int, cli_every: int, hang_s: float, until: float
) -> dict:
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    workers: dict[tuple[str, int], mp.Process] = {}
    for source in sources:
        for j in range(jobs):
            p = ctx.Process(target=_worker, args=(source, range(j, n, jobs), cli_every, until, out))
            p.start()
            WORKER_PIDS.add(p.pid)
            workers[(source, j)] = p
    tally = {s: Tally() for s in sources}
    running: dict[tuple[str, int], float] = {}  # (source, snapshot) -> started
    live = len(workers)
    while live:
        try:
            msg = out.get(timeout=5)
        except queue.Empty:
            msg = None
        if msg:
            kind, source, i = msg[:3]
            t = tally[source]
            if kind == "start":
                running[(source, i)] = msg[3]
            elif kind == "exit":
                live -= 1
            else:
                running.pop((source, i), None)
                t.done += 1
                t.slowest = max(t.slowest, msg[3])
                if kind == "error":
                    t.errors += 1
                    t.examples.append(msg[4])
                else:
                    t.inconsistent += bool(msg[4])
                    t.examples += msg[4][:1]
                    t.vanished += msg[5]
        now = time.monotonic()
        for (source, i), started in list(running.items()):
            if now - started > hang_s:  # stop the worker stuck in it
                tally[source].hangs += 1
                del running[(source, i)]
                key = (source, i % jobs)
                workers[key].kill()
                live -= 1
    for p in workers.values():
        p.join()
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=1000, help="per source")
    ap.add_argument("--sources", default="bpf,procfs")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes per source")
    ap.add_argument(
        "--cli-every",
        type=int,
        default=10,
        help="every Nth snapshot through the kpeek CLI (0: none)",
    )
    ap.add_argument("--hang", type=float, default=300, help="seconds that count as a hang")
    ap.add_argument("--minutes", type=float, default=0, help="stop starting snapshots after")
    ap.add_argument("--out", default=str(REPO / "bench/results/soak.txt"))
    args = ap.parse_args()
    sources = args.sources.split(",")

    churn = Churn("/etc/hostname")
    forks_before = _forks()
    kmsg_before = kmsg_records()
    last_seq = kmsg_before[-1][0] if kmsg_before else -1
    cpu0, wall0 = os.times(), time.monotonic()
    try:
        until = time.monotonic() + (args.minutes * 60 if args.minutes else 1e9)
        tally = soak(sources, args.snapshots, args.jobs, args.cli_every, args.hang, until)
    finally:
        churn.stop()
    wall, cpu1 = time.monotonic() - wall0, os.times()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    new_kmsg = [text for seq, text in kmsg_records() if seq > last_seq]
    forks = _forks() - forks_before

    lines = [
        f"bench/soak.py --snapshots {args.snapshots} --sources {args.sources} --jobs {args.jobs} "
        f"--cli-every {args.cli_every} --hang {args.hang:g}"
        + (f" --minutes {args.minutes:g}" if args.minutes else ""),
        f"machine: {os.cpu_count()} CPUs, {_processes()} processes "
        f"at start, load {os.getloadavg()[0]:.1f} at end; kernel {os.uname().release}",
        f"{wall:.0f} s wall, {cpu:.0f} s CPU (workers and CLI runs), {forks} forks on the machine "
        "during the run (the churn's and everyone else's)",
    ]
    failed = bool(new_kmsg)
    for source, t in tally.items():
        lines.append(
            f"{source:7} {t.done} snapshots: {t.errors} tracebacks, {t.inconsistent} inconsistent "
            f"documents, {t.hangs} hangs; slowest {t.slowest:.1f} s; {t.vanished} descriptors "
            "counted as vanished"
        )
        failed |= bool(t.errors or t.inconsistent or t.hangs or t.done < args.snapshots)
        lines += [f"  e.g. {e.strip()}" for e in t.examples[:3]]
    lines.append(f"new kernel messages during the run: {len(new_kmsg)}")
    # Other sessions share this kernel: say what the records are, and whether
    # any names a process of this soak (its own, its workers', the churn's).
    ours = {os.getpid(), churn.proc.pid, *WORKER_PIDS}
    named = {int(n) for m in new_kmsg for n in re.findall(r"(?:pid[: ]|:)(\d+)\b", m)}
    titles = Counter(m for m in new_kmsg if m and not m[0].isspace() and not m.startswith(" "))
    lines += [f"  {n} x {t[:120]}" for t, n in titles.most_common(10)]
    lines.append(f"  naming a process of this soak: {len(named & ours)}")
    # A kernel report in a kpeek BPF program's code is kpeek's whoever ran
    # it (a CLI run's pid is not in `ours`): said apart, and never passed over.
    reports = [m for m in new_kmsg if KERNEL_REPORT.search(m)]
    programs = sorted({p for m in new_kmsg for p in BPF_PROGRAM.findall(m)})
    lines.append(f"  kernel reports (oops, BUG, WARNING): {len(reports)}; in kpeek's BPF "
                 f"programs: {', '.join(programs) or 'none'}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    Path(args.out).write_text(report)
    return 1 if failed else 0


def _forks() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    return 0


def _processes() -> int:
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


if __name__ == "__main__":
    raise SystemExit(main())
