"""Benchmark: kpeek doctor on a machine of 10,000 tasks with 20 blocked chains.

Starts sleeping processes (`sleep`, with posix_spawn) until the machine has
``--tasks`` tasks, 20 flock chains, each a circle of 3 processes (A holds
f0 and waits for f1, B holds f1 and waits for f2, C holds f2 and waits for
f0): 20 real deadlocks, and 20 pipe readers whose writer is stopped
(SIGSTOP): 20 waits on a stopped root. Then times, in one run, the peer (a
plain /proc walk that reads what any such tool must read per task: stat,
wchan, stack and syscall, and lists every descriptor table), the BPF and
the procfs snapshots, the diagnosis, and the whole `kpeek doctor --json`
command on each source (the best of ``--repeat`` runs, wall and CPU time
(user+sys): the machine is shared); prints the ratios, checks that all 40
are reported, and writes bench/results/bench_doctor.txt. Everything started
is killed (and continued) at the end.

Run as root: .venv/bin/python bench/bench_doctor.py [--tasks N] [--chains N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
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
                    with (
                        contextlib.suppress(OSError),
                        open(f"/proc/{pid}/task/{tid}/{name}", "rb") as f,
                    ):
                        f.read()
                n += 1
    return n


def count_tasks() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                n += len(os.listdir(f"/proc/{pid}/task"))
    return n


def timed(fn):
    """(result, wall seconds, CPU seconds of this process: user+sys)."""
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t, time.process_time() - c


def run_cli(argv: list[str], repeat: int) -> tuple[subprocess.CompletedProcess, float, float]:
    """The best wall and CPU (user+sys of the child) of ``repeat`` runs."""
    walls, cpus, done = [], [], None
    for _ in range(repeat):
        before, t = os.times(), time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        walls.append(time.perf_counter() - t)
        after = os.times()
        cpus.append(after.children_user - before.children_user
                    + after.children_system - before.children_system)
    assert done is not None
    return done, min(walls), min(cpus)


def spawn_sleepers(count: int) -> list[int]:
    sleep = shutil.which("sleep") or "/bin/sleep"
    return [os.posix_spawn(sleep, ["sleep", "3600"], os.environ) for _ in range(count)]


def cli_findings(out: str, chain_pids: set[int], readers: set[int]) -> tuple[int, set[int]]:
    doc = json.loads(out)
    found = sum(1 for d in doc["deadlocks"] if {int(n.split(":")[1]) for n in d["nodes"]}
                & chain_pids)
    return found, {h["pid"] for h in doc["hung"] if h["fix"]} & readers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10000,
                    help="tasks on the machine to reach with sleeping processes")
    ap.add_argument("--chains", type=int, default=20)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_doctor needs root (kernel stacks, other processes' files, BPF)")
        return 3

    from kpeek.diagnose.findings import diagnose
    from kpeek.sources import procfs
    from kpeek.sources.bpf import snapshot as bpf

    sleepers: list[int] = []
    chains: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="kpeek-bench-")
    kpeek = str(Path(sys.executable).with_name("kpeek"))
    try:
        chains = start_chains(tmp, args.chains, args.length)
        chain_pids = {p.pid for p in chains}
        stopped, readers = start_stopped_writers(args.chains)
        chains += stopped
        want = max(0, args.tasks - count_tasks())
        _, t_spawn, _ = timed(lambda: sleepers.extend(spawn_sleepers(want)))
        time.sleep(1.0)  # the readers reach pipe_read, the sleepers nanosleep

        walked, t_walk, c_walk = timed(proc_walk)
        snap, t_bpf, c_bpf = timed(lambda: bpf.take_snapshot(stacks=bpf.BLOCKED))
        psnap, t_proc, c_proc = timed(lambda: procfs.take_snapshot(stacks=True))
        diag, t_diag, c_diag = timed(lambda: diagnose(snap, kernel_log=False))
        found = [d for d in diag.deadlocks if {diag.tgid_of(n) for n in d.nodes} & chain_pids]
        covered = {diag.tgid_of(n) for d in found for n in d.nodes} & chain_pids
        stuck_found = {h.task.pid for h in diag.hung if "stopped" in h.root} & readers

        cli, t_cli, c_cli = run_cli([kpeek, "doctor", "--json"], args.repeat)
        cli_found, cli_stuck = cli_findings(cli.stdout, chain_pids, readers)
        source = json.loads(cli.stdout)["source"]
        pcli, t_pcli, c_pcli = run_cli([kpeek, "doctor", "--json", "--source", "procfs"], 1)
        pcli_found, pcli_stuck = cli_findings(pcli.stdout, chain_pids, readers)

        def per(seconds: float, cpu: float) -> str:
            return f"{seconds:.2f} s (CPU {cpu:.2f} s)"

        rows = [
            ("tasks in the BPF snapshot", f"{len(snap.tasks)} ({len(psnap.tasks)} in procfs)"),
            ("descriptors in the BPF snapshot", f"{len(snap.fds)}"),
            ("sleeping processes started", f"{len(sleepers)} (in {t_spawn:.2f} s)"),
            (f"flock chains (circles of {args.length})", f"{args.chains}"),
            ("pipe readers behind a stopped writer", f"{len(readers)}"),
            ("wait edges in graph", f"{len(diag.graph.edges)}"),
            ("plain /proc walk (peer)", per(t_walk, c_walk) + f", {walked} tasks"),
            ("snapshot, bpf (as doctor: D stacks, syscalls)", per(t_bpf, c_bpf)),
            ("snapshot, procfs (stacks)", per(t_proc, c_proc)),
            ("diagnosis of the bpf snapshot", per(t_diag, c_diag)),
            (f"kpeek doctor --json ({source}, best of {args.repeat})",
             per(t_cli, c_cli) + f", exit {cli.returncode}"),
            ("  / plain walk", f"{t_cli / t_walk:.2f}x wall, {c_cli / c_walk:.2f}x CPU"),
            ("kpeek doctor --json --source procfs", per(t_pcli, c_pcli)
             + f", exit {pcli.returncode}"),
            ("  / plain walk", f"{t_pcli / t_walk:.2f}x wall, {c_pcli / c_walk:.2f}x CPU"),
            ("chains reported (in-process)",
             f"{len(found)} / {args.chains}, {len(covered)} / {len(chain_pids)} pids"),
            ("chains reported (CLI bpf, procfs)", f"{cli_found}, {pcli_found} / {args.chains}"),
            ("stopped-writer waits reported",
             f"{len(stuck_found)} / {len(readers)} (CLI {len(cli_stuck)}, {len(pcli_stuck)})"),
        ]
        width = max(len(k) for k, _ in rows)
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
        header = (f"bench_doctor  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
                  f"kernel {os.uname().release}  cpus {os.cpu_count()}  "
                  f"load {os.getloadavg()[0]:.1f}\n"
                  f"command: .venv/bin/python bench/bench_doctor.py --tasks {args.tasks} "
                  f"--chains {args.chains} --repeat {args.repeat}\n")
        print(header + text)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(header + text + "\n")
        ok = (len(found) == args.chains and cli_found == pcli_found == args.chains
              and cli.returncode == pcli.returncode == 1
              and stuck_found == readers == cli_stuck == pcli_stuck)
        return 0 if ok else 1
    finally:
        for p in chains:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGKILL)
                p.send_signal(signal.SIGCONT)
        for pid in sleepers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for p in chains:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for pid in sleepers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for f in Path(tmp).iterdir():
            f.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    sys.exit(main())
