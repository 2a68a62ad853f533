"""Benchmark: kpeek doctor on 2,000 sleeping tasks with 20 blocked chains.

Starts 2,000 sleeping processes (`sleep`), 20 flock chains, each a circle
of 3 processes (A holds f0 and waits for f1, B holds f1 and waits for f2,
C holds f2 and waits for f0): 20 real deadlocks, and 20 pipe readers
whose writer is stopped (SIGSTOP): 20 waits on a stopped root. Then times
the snapshot (procfs, stacks and files), the diagnosis, the whole
`kpeek doctor --json` command, and, as the peer in the same run, a plain
/proc walk that reads what any such tool must read per task (stat, wchan,
stack, syscall) and lists every descriptor table; prints the ratio, checks
that all 40 are reported, and writes bench/results/bench_doctor.txt.
Everything started is killed (and continued) at the end.

Run as root: .venv/bin/python bench/bench_doctor.py [--sleepers N] [--chains N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCKER = """
import fcntl, sys
first, second = sys.argv[1:3]
a = open(first, "r+"); fcntl.flock(a, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
b = open(second, "r+"); fcntl.flock(b, fcntl.LOCK_EX)
"""
RESULTS = Path(__file__).parent / "results" / "bench_doctor.txt"


def start_chains(tmp: str, chains: int, length: int) -> list[subprocess.Popen]:
    procs = []
    for c in range(chains):
        files = [os.path.join(tmp, f"chain{c}-f{i}") for i in range(length)]
        for f in files:
            Path(f).write_text("x")
        group = [subprocess.Popen([sys.executable, "-c", LOCKER, files[i],
                                   files[(i + 1) % length]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for i in range(length)]
        for p in group:
            assert p.stdout.readline().startswith("locked")
        for p in group:
            p.stdin.write("go\n")
            p.stdin.flush()
        procs += group
    deadline = time.monotonic() + 30
    for p in procs:
        while time.monotonic() < deadline:
            with open(f"/proc/{p.pid}/wchan") as f:
                if f.read().startswith(("locks_lock_inode_wait", "flock")):
                    break
            time.sleep(0.01)
    return procs


def start_stopped_writers(count: int) -> tuple[list[subprocess.Popen], set[int]]:
    """``count`` readers, each of a pipe whose only writer is stopped."""
    procs, readers = [], set()
    for _ in range(count):
        r, w = os.pipe()
        writer = subprocess.Popen(["sleep", "3600"], pass_fds=[w])
        reader = subprocess.Popen([sys.executable, "-c", "import os; os.read(0, 1)"], stdin=r)
        os.close(r)
        os.close(w)
        os.kill(writer.pid, signal.SIGSTOP)
        procs += [writer, reader]
        readers.add(reader.pid)
    return procs, readers


def proc_walk() -> int:
    """The plain peer: per task stat, wchan, stack and syscall; per process
    its descriptor table. Returns the number of tasks read."""
    n = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    os.readlink(f"/proc/{pid}/fd/{fd}")
            for tid in os.listdir(f"/proc/{pid}/task"):
                for name in ("stat", "wchan", "stack", "syscall"):
                    with contextlib.suppress(OSError), \
                            open(f"/proc/{pid}/task/{tid}/{name}", "rb") as f:
                        f.read()
                n += 1
    return n


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sleepers", type=int, default=2000)
    ap.add_argument("--chains", type=int, default=20)
    ap.add_argument("--length", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_doctor needs root (kernel stacks, other processes' files)")
        return 3

    from kpeek.diagnose.findings import diagnose
    from kpeek.sources.procfs import take_snapshot

    sleepers: list[subprocess.Popen] = []
    chains: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="kpeek-bench-")
    try:
        (_, t_spawn) = timed(lambda: sleepers.extend(
            subprocess.Popen(["sleep", "3600"]) for _ in range(args.sleepers)))
        chains = start_chains(tmp, args.chains, args.length)
        chain_pids = {p.pid for p in chains}
        stopped, readers = start_stopped_writers(args.chains)
        chains += stopped
        time.sleep(0.5)  # the readers reach pipe_read

        walked, t_walk = timed(proc_walk)
        snap, t_snap = timed(lambda: take_snapshot(stacks=True))
        diag, t_diag = timed(lambda: diagnose(snap, kernel_log=False))
        found = [d for d in diag.deadlocks if {diag.tgid_of(n) for n in d.nodes} & chain_pids]
        covered = {diag.tgid_of(n) for d in found for n in d.nodes} & chain_pids
        stuck_found = {h.task.pid for h in diag.hung if "stopped" in h.root} & readers

        cli, t_cli = timed(lambda: subprocess.run(
            [str(Path(sys.executable).with_name("kpeek")), "doctor", "--json"],
            capture_output=True, text=True, timeout=600))
        doc = json.loads(cli.stdout)
        cli_found = sum(1 for d in doc["deadlocks"]
                        if {int(n.split(":")[1]) for n in d["nodes"]} & chain_pids)
        cli_stuck = {h["pid"] for h in doc["hung"] if h["fix"]} & readers

        rows = [
            ("tasks in snapshot", f"{len(snap.tasks)}"),
            ("descriptors in snapshot", f"{len(snap.fds)}"),
            ("sleeping processes started", f"{args.sleepers} (in {t_spawn:.2f} s)"),
            ("flock chains (circles of "
             f"{args.length})", f"{args.chains}"),
            ("pipe readers behind a stopped writer", f"{len(readers)}"),
            ("wait edges in graph", f"{len(diag.graph.edges)}"),
            ("plain /proc walk (peer)", f"{t_walk:.2f} s ({walked} tasks)"),
            ("snapshot (procfs, stacks=True)", f"{t_snap:.2f} s"),
            ("diagnosis (graph, cycles, chains)", f"{t_diag:.2f} s"),
            ("(snapshot + diagnosis) / plain walk", f"{(t_snap + t_diag) / t_walk:.1f}x"),
            ("kpeek doctor --json (whole command)", f"{t_cli:.2f} s, exit {cli.returncode}"),
            ("chains reported (in-process)", f"{len(found)} / {args.chains}, "
                                              f"{len(covered)} / {len(chain_pids)} pids"),
            ("chains reported (CLI)", f"{cli_found} / {args.chains}"),
            ("stopped-writer waits reported", f"{len(stuck_found)} / {len(readers)} "
                                               f"(CLI {len(cli_stuck)})"),
        ]
        width = max(len(k) for k, _ in rows)
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
        header = (f"bench_doctor  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
                  f"kernel {os.uname().release}  cpus {os.cpu_count()}\n")
        print(header + text)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(header + text + "\n")
        ok = len(found) == args.chains and cli_found == args.chains and cli.returncode == 1 \
            and stuck_found == readers == cli_stuck
        return 0 if ok else 1
    finally:
        for p in chains + sleepers:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGKILL)
                p.send_signal(signal.SIGCONT)
        for p in chains + sleepers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for f in Path(tmp).iterdir():
            f.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    sys.exit(main())
