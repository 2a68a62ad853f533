"""Benchmark: a full `kpeek files --json` snapshot against lsof, psutil and a
plain /proc walk, over the same family of N processes with ~M descriptors.

Run as root: .venv/bin/python bench/bench_files.py --processes 5000 --fds 10
Writes bench/results/bench_files.txt.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import psutil

from family import Family, timed
from kpeek import jsonout
from kpeek.render.tables import files_document
from kpeek.sources import take_snapshot


def kpeek_snapshot(pids: list[int], source: str) -> int:
    snap = take_snapshot(source, pids=pids, threads=False)
    jsonout.dumps("files", files_document(snap, list(snap.processes())))
    return len(snap.fds)


def kpeek_cli(pids: list[int], source: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "kpeek", "files", "--json", "--source", source, *map(str, pids)],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return out.count(b'"fd":')


def lsof(pids: list[int]) -> int:
    out = subprocess.run(
        ["lsof", "-n", "-P", "-w", "-p", ",".join(map(str, pids))],
        stdout=subprocess.PIPE,
        check=False,
    ).stdout
    return out.count(b"\n") - 1


def psutil_files(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        p = psutil.Process(pid)
        n += len(p.open_files()) + len(p.net_connections("all"))
    return n


def proc_walk(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                f.read()
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=1000)
    ap.add_argument("--fds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    t = time.perf_counter()
    fam = Family(args.processes, args.fds)
    build = time.perf_counter() - t
    try:
        pids = fam.pids
        n = fam.descriptors
        tools = [
            ("kpeek files --json (CLI, bpf)", lambda p: kpeek_cli(p, "bpf")),
            ("kpeek files --json (CLI, procfs)", lambda p: kpeek_cli(p, "procfs")),
            ("kpeek in-process (bpf)", lambda p: kpeek_snapshot(p, "bpf")),
            ("kpeek in-process (procfs)", lambda p: kpeek_snapshot(p, "procfs")),
            ("plain /proc walk", proc_walk),
            ("lsof -n -P", lsof),
            ("psutil open_files+connections", psutil_files),
        ]
        results = [(name, timed(lambda f=fn: f(pids), args.repeat)) for name, fn in tools]
    finally:
        fam.close()

    base = results[0][1]
    lines = [
        f"kpeek bench_files  {time.strftime('%Y-%m-%d %H:%M')}  kernel {os.uname().release}",
        f"{args.processes} processes, {n} descriptors (family built in {build:.1f} s); "
        f"best of {args.repeat}",
        f"{'tool':34} {'seconds':>9} {'us/fd':>8} {'x kpeek':>8}   (x kpeek: time / first row's)",
    ]
    for name, secs in results:
        lines.append(f"{name:34} {secs:9.3f} {secs / n * 1e6:8.2f} {secs / base:8.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"peak RSS of the benchmark process (kpeek in-process dominates): {peak:.0f} MiB")
    lines.append("psutil sees regular files and sockets only (no pipes); lsof sees everything.")
    report = "\n".join(lines)
    print(report)
    out = Path(__file__).parent / "results" / "bench_files.txt"
    out.write_text(report + "\n")


if __name__ == "__main__":
    main()
