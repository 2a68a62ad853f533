"""Memory-walk snapshot vs /proc snapshot of the whole live system.

Spawns N sleeping processes (default 1,000) with 10 descriptors each (see
family.py), then times a full snapshot of every task and descriptor table
from the memory-walk source (kernel objects read through the BPF memory
reader, as kpeek reads a crash dump; a fresh reader each run) and from the
procfs source, and prints both and their ratio. With ``--dump FILE`` it also
times the walk of a crash dump (``kpeek -c FILE files``'s snapshot).

    .venv/bin/python bench/bench_memwalk.py [--processes 1000] [--repeat 3] [--dump FILE]

Needs root (BPF). Results go to bench/results/bench_memwalk.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from family import Family
from kpeek.model import Snapshot
from kpeek.sources import memwalk, procfs
from kpeek.targets.live import open_live

RESULTS = Path(__file__).parent / "results" / "bench_memwalk.txt"


def _times(take: Callable[[], Snapshot], repeat: int) -> tuple[list[float], Snapshot]:
    times, snap = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        snap = take()
        times.append(time.perf_counter() - start)
    assert snap is not None
    return times, snap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=1000)
    ap.add_argument("--fds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dump", help="also time the walk of this crash dump")
    args = ap.parse_args()
    open_live()  # BTF, kallsyms and the BPF program loaded once, outside the timings
    lines = [f"kpeek bench_memwalk  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
             f"kernel {platform.release()}  cpus {os.cpu_count()}"]
    family = Family(args.processes, args.fds)
    try:
        lines.append(f"sleepers: {args.processes} processes x {args.fds} fds "
                     f"({family.descriptors} descriptors)")
        runs = {
            "memory": lambda: memwalk.take_snapshot(open_live()),
            "procfs": lambda: procfs.take_snapshot(),
        }
        best = {}
        lines.append(f"{'source':8} {'tasks':>7} {'fds':>8} {'best s':>8} {'median s':>9} "
                     f"{'us/fd':>7}")
        for name, take in runs.items():
            times, snap = _times(take, args.repeat)
            best[name] = min(times)
            lines.append(f"{name:8} {len(snap.tasks):>7} {len(snap.fds):>8} {min(times):>8.3f} "
                         f"{statistics.median(times):>9.3f} "
                         f"{1e6 * min(times) / max(len(snap.fds), 1):>7.1f}")
        lines.append(f"procfs / memory (best of {args.repeat}): "
                     f"{best['procfs'] / best['memory']:.2f}x")
    finally:
        family.close()
    if args.dump:
        from kpeek.targets.dump import open_dump

        start = time.perf_counter()
        kernel = open_dump(args.dump)
        opened = time.perf_counter() - start
        times, snap = _times(lambda: memwalk.take_snapshot(kernel), args.repeat)
        lines.append(f"dump {args.dump} ({os.path.getsize(args.dump) >> 20} MiB): open "
                     f"{opened:.3f} s, walk {len(snap.tasks)} tasks {len(snap.fds)} fds "
                     f"best {min(times):.3f} s")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
