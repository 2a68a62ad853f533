"""BPF snapshot vs /proc snapshot of a busy system.

Spawns N sleeper processes (default 5,000) with 10 descriptors each: stdin
opened by each process itself, stdout and stderr on a pipe shared by its
group of 10, a socket of a socketpair, a memfd, the pipe's read end, two
files opened by the process itself, and one open file inherited twice (fd 8
and its dup on fd 9). Then times a full snapshot (all tasks and threads, all
descriptor tables) from the BPF source and from the procfs source, and
reports times, their ratio, time per descriptor and peak Python memory.
Every sleeper is killed and reaped at the end, also on Ctrl-C or error.

    .venv/bin/python bench/bench_sources.py [--processes 5000] [--repeat 3]

Needs root (BPF). Results go to bench/results/bench_sources.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from kpeek.model import Snapshot
from kpeek.sources import procfs
from kpeek.sources.bpf import snapshot as bpf

GROUP = 10  # processes sharing one pipe, socketpair, memfd and open file
RESULTS = Path(__file__).parent / "results" / "bench_sources.txt"


def _high(fd: int) -> int:
    """Move a descriptor above the slots the sleepers use (0-9), close-on-exec."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000)
    os.close(fd)
    return moved


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the listing's own descriptor, already closed
        return False


class Sleepers:
    """N /bin/sleep processes in one process group, each with 10 descriptors."""

    def __init__(self, count: int, tmpdir: str) -> None:
        self.pids: list[int] = []
        self.pgid = 0
        self._parent_fds: list[int] = []
        self.count = count
        self.tmpdir = tmpdir

    def spawn(self) -> None:
        import socket

        sleep = "/bin/sleep"
        # Descriptors this process inherited without close-on-exec (from a
        # shell or job runner) would leak into every sleeper: close them there.
        leaked = [
            (os.POSIX_SPAWN_CLOSE, fd)
            for fd in map(int, os.listdir("/proc/self/fd"))
            if fd >= 10 and _inheritable(fd)
        ]
        for g in range(0, self.count, GROUP):
            r, w = (_high(x) for x in os.pipe())
            s1, s2 = socket.socketpair()
            sa, sb = _high(s1.detach()), _high(s2.detach())
            memfd = _high(os.memfd_create(f"kpeek-bench-{g}"))
            path = os.path.join(self.tmpdir, f"group-{g}")
            shared = _high(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._parent_fds += [r, w, sa, sb, memfd, shared]
            for i in range(min(GROUP, self.count - g)):
                actions = [
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, w, 1),
                    (os.POSIX_SPAWN_DUP2, w, 2),
                    (os.POSIX_SPAWN_OPEN, 3, path, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, sa if i % 2 else sb, 4),
                    (os.POSIX_SPAWN_DUP2, memfd, 5),
                    (os.POSIX_SPAWN_DUP2, r, 6),
                    (os.POSIX_SPAWN_OPEN, 7, "/etc/passwd", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, shared, 8),
                    (os.POSIX_SPAWN_DUP2, shared, 9),
                    *leaked,
                ]
                pid = os.posix_spawn(
                    sleep, [sleep, "3600"], {}, file_actions=actions, setpgroup=self.pgid
                )
                self.pgid = self.pgid or pid
                self.pids.append(pid)

    def cleanup(self) -> None:
        if self.pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()
        for fd in self._parent_fds:
            os.close(fd)
        self._parent_fds.clear()


def _timed(fn: Callable[[], Snapshot], repeat: int) -> tuple[list[float], Snapshot]:
    times, snap = [], None
    failures = 0
    while len(times) < repeat:
        start = time.perf_counter()
        try:
            snap = fn()
        except OSError as e:  # a shared machine: other people's FUSE mounts come and go
            failures += 1
            print(f"run failed ({e}); retrying", file=sys.stderr)
            if failures > 3:
                raise
            continue
        times.append(time.perf_counter() - start)
    assert snap is not None
    return times, snap


def _peak_mib(fn: Callable[[], Snapshot]) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="kpeek-bench-") as tmp:
        sleepers = Sleepers(args.processes, tmp)
        old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            t0 = time.perf_counter()
            sleepers.spawn()
            spawn_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            bpf.take_snapshot()  # compile (if not cached) and load the programs
            load_s = time.perf_counter() - t0

            runs = {
                "bpf": lambda: bpf.take_snapshot(),
                "procfs": lambda: procfs.take_snapshot(),
            }
            # Interleaved, so that both see the machine in the same state
            # (other people's processes come and go on a shared machine).
            timings: dict[str, list[float]] = {name: [] for name in runs}
            snaps: dict[str, Snapshot] = {}
            for _ in range(args.repeat):
                for name, fn in runs.items():
                    times, snaps[name] = _timed(fn, 1)
                    timings[name] += times
            ours_pids = set(sleepers.pids)
            results = {}
            for name, fn in runs.items():
                ours = sum(1 for d in snaps[name].fds if d.tgid in ours_pids)
                results[name] = (timings[name], snaps[name], ours, _peak_mib(fn))
        finally:
            sleepers.cleanup()
            signal.signal(signal.SIGINT, old_int)

    lines = [
        f"kpeek bench_sources  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
        f"kernel {platform.release()}  cpus {os.cpu_count()}",
        f"sleepers: {args.processes} processes x 10 fds, spawned in {spawn_s:.1f} s; "
        f"BPF first load {load_s * 1000:.0f} ms",
        "",
        f"{'source':<8} {'tasks':>7} {'fds':>7} {'ours':>7} {'open files':>10} "
        f"{'best s':>8} {'median s':>9} {'us/fd':>7} {'peak MiB':>9}",
    ]
    for name, (times, snap, ours, peak) in results.items():
        best = min(times)
        lines.append(
            f"{name:<8} {len(snap.tasks):>7} {len(snap.fds):>7} {ours:>7} "
            f"{len(snap.open_files):>10} {best:>8.3f} {statistics.median(times):>9.3f} "
            f"{best / max(len(snap.fds), 1) * 1e6:>7.1f} {peak:>9.1f}"
        )
    ratio = min(results["procfs"][0]) / min(results["bpf"][0])
    lines += ["", f"procfs / bpf (best of {args.repeat}): {ratio:.1f}x"]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
