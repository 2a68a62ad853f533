"""kpeek's commands against their peers, each timed in the same run.

Start-up on the idle machine (each verb against ``python -c pass``, the very
interpreter kpeek runs on), then,
for a family of N sleeping processes with 10 descriptors each, at every N
given: ``kpeek ps`` (text and --json) against ``ps aux``, and whole-system
``kpeek files`` (text, --json, both sources) against ``lsof -n -P`` and
against the raw BPF iterator read (a process that only loads the programs
and reads the two iterators' bytes). Prints best-of-R wall seconds, µs per
task or per descriptor (costs must grow linearly), the ratio to the peer
of each row, best-of-R CPU seconds (user + system: steadier than wall time
on a shared machine) and its ratio, and peak RSS. The family is killed and reaped at the end.

    .venv/bin/python bench/bench_cli.py [--processes 1000,5000,20000] [--repeat 3]

Needs root. Writes bench/results/bench_cli.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent / "tests"))

from family import Family

RESULTS = Path(__file__).parent / "results" / "bench_cli.txt"
# What users type: the console script pip installs beside the interpreter
# (``python -m kpeek`` adds runpy's imports, ~3 ms of CPU, to every start).
_SCRIPT = Path(sys.executable).with_name("kpeek")
KPEEK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kpeek"]
# An older tree's kpeek as its own console script would start it (the one
# installed here imports what this tree's does: kpeek.cli.entry).
KPEEK_OF_TREE = [sys.executable, "-c", "import sys; from kpeek import cli; "
                 "sys.exit(getattr(cli, 'entry', cli.main)())"]
# The interpreter kpeek runs on: "python3" from PATH may be a version
# manager's shell shim that costs ten times the interpreter's own start.
PY = sys.executable
RAW_READ = (
    "from kpeek.sources.bpf.loaded import bpf_iterator as it\n"
    "it('snapshot', 'snapshot_tasks').run(); it('snapshot', 'snapshot_files').run()\n"
)
# The four iterators whole-system `files` reads: tasks, descriptors, and the
# cwd/rtd/txt (iter/task) and mem (iter/task_vma) rows.
RAW_READ_ALL = RAW_READ + (
    "it('snapshot', 'snapshot_roots').run(); it('snapshot', 'snapshot_maps').run()\n"
)
OOPS_LOG = (
    "BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
    "#PF: supervisor read access in kernel mode\n"
    "Oops: 0000 [#1] PREEMPT SMP NOPTI\n"
    "CPU: 1 PID: 4242 Comm: cat Not tainted 6.1.0 #1\n"
    "RIP: 0010:pipe_read+0x2a/0x450\n"
    "Call Trace:\n <TASK>\n vfs_read+0x1f0/0x2e0\n ksys_read+0x5f/0xe0\n </TASK>\n"
)


def run(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one run, output thrown away. A first
    word NAME=VALUE sets that variable (PYTHONPATH=... for --before rows)."""
    env = dict(os.environ)
    while "=" in cmd[0]:
        name, _, value = cmd[0].partition("=")
        env[name] = value
        cmd = cmd[1:]
    start = time.perf_counter()
    pid = os.posix_spawnp(
        cmd[0], cmd, env,
        file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                      (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
    )  # fmt: skip
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"failed: {shlex.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def table(title: str, peer: list[str], rows: list[tuple[str, list[str]]], repeat: int,
          unit: str, count: int) -> list[str]:
    """Rows timed in turn with their peer (interleaved: the machine changes)."""
    cmds = [("peer: " + shlex.join(peer), peer), *rows]
    walls: dict[str, list[float]] = {name: [] for name, _ in cmds}
    cpus: dict[str, list[float]] = {name: [] for name, _ in cmds}
    rss: dict[str, float] = {name: 0.0 for name, _ in cmds}
    for _ in range(repeat):
        for name, cmd in cmds:
            w, r, c = run(cmd)
            walls[name].append(w)
            cpus[name].append(c)
            rss[name] = max(rss[name], r)
    peer_s, peer_cpu = min(walls[cmds[0][0]]), min(cpus[cmds[0][0]])
    BEST.update({name: (min(walls[name]), min(cpus[name])) for name, _ in cmds})
    out = [title, f"  {'command':<60} {'best s':>7} {unit:>9} {'x peer':>6} "
                  f"{'CPU s':>7} {'x peer':>6} {'RSS MiB':>7}"]
    for name, _ in cmds:
        b, c = min(walls[name]), min(cpus[name])
        per = f"{b / max(count, 1) * 1e6:.2f}" if count else ""
        out.append(f"  {name:<60} {b:>7.3f} {per:>9} {b / peer_s:>6.2f} "
                   f"{c:>7.3f} {c / max(peer_cpu, 1e-6):>6.2f} {rss[name]:>7.0f}")
    return out


BEST: dict[str, tuple[float, float]] = {}  # row name -> (best wall s, best CPU s), each table
BEFORE: list[str] = []  # a source tree to time too, e.g. the main checkout's src
# Each "before" tree's own cache folder (XDG_CACHE_HOME): its BPF objects
# differ, and an older tree removes the other's cut-down BTF when it makes
# its own, which would charge bpftool to the rows of both.
CACHES: dict[str, str] = {}
SKIP_PROCFS = False  # --bpf-only
ONLY_PROCFS = False  # --procfs-only


def kpeek(*args: str) -> list[tuple[str, list[str]]]:
    rows = [("kpeek " + " ".join(args), [*KPEEK, *args])]
    for src in BEFORE:
        # Rows are told apart by name: with several trees, each says which.
        tree = f" [{Path(src).resolve().parent.name}]" if len(BEFORE) > 1 else ""
        if src not in CACHES:
            CACHES[src] = tempfile.mkdtemp(prefix="kpeek-bench-cache-")
        rows.append((f"  before{tree}: {' '.join(args)}",
                     [f"PYTHONPATH={src}", f"XDG_CACHE_HOME={CACHES[src]}", *KPEEK_OF_TREE,
                      *args]))
    return rows


def startup(repeat: int) -> list[str]:
    fd, log = tempfile.mkstemp(prefix="kpeek-bench-oops-")
    os.write(fd, OOPS_LOG.encode())
    os.close(fd)
    try:
        rows = [
            *kpeek("ps", "-p", "1"),
            *kpeek("files", str(os.getpid())),
            *kpeek("sym", "schedule"),
            # The kernel formatting /proc/kallsyms, which sym NAME reads whole.
            ("  cat /proc/kallsyms (sym's floor)", ["cat", "/proc/kallsyms"]),
            *kpeek("struct", "list_head"),
            *kpeek("oops", log),
        ]
        # The BPF iterators walk every task (and file) in the kernel, filtered
        # or not: say how idle the machine was.
        running = sum(name.isdigit() for name in os.listdir("/proc"))
        lines = table(f"start-up ({running} processes on the machine)", [PY, "-c", "pass"],
                      rows, repeat, "", 0)
        lines += ["", *kept_startup(repeat)]
        if shutil.which("pahole"):
            lines += ["", *table("struct layout, a new process each", ["pahole", "task_struct"],
                                 kpeek("struct", "task_struct"), repeat, "", 0)]
        return lines
    finally:
        os.unlink(log)


def kept_startup(repeat: int) -> list[str]:
    """The BPF verbs with their programs loaded by each process
    (KPEEK_KEEP_BPF=0) and kept in bpffs by an earlier one (kept.py). Where
    /sys/fs/bpf is no bpffs, the kept rows run in a private mount namespace
    that has one (tests/bpffs_ns.py; nsenter's own start is in the figures)."""
    from bpffs_ns import private_bpffs
    from kpeek.sources.bpf import kept

    with contextlib.ExitStack() as stack:
        inside: list[str] = []
        if kept.why_not():
            inside = stack.enter_context(private_bpffs()).prefix()
        run([*inside, *KPEEK, "ps", "-p", "1"])  # the first run keeps the programs
        rows = []
        for args in (("ps", "-p", "1"), ("files", str(os.getpid()))):
            rows += [(f"kpeek {' '.join(args)}  (each process loads, KPEEK_KEEP_BPF=0)",
                      ["KPEEK_KEEP_BPF=0", *KPEEK, *args]),
                     (f"kpeek {' '.join(args)}  (kept BPF programs)", [*inside, *KPEEK, *args])]
        return table("start-up of the BPF verbs, BPF programs loaded vs kept",
                     [*inside, PY, "-c", "pass"], rows, repeat, "", 0)


def at_scale(processes: int, repeat: int) -> list[str]:
    t0 = time.perf_counter()
    fam = Family(processes, 10)
    try:
        built = time.perf_counter() - t0
        tasks = len(os.listdir("/proc")) - 60  # about: /proc has ~60 non-pid entries
        fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in os.listdir("/proc") if p.isdigit()
                  and os.path.exists(f"/proc/{p}/fd"))
        lines = [f"family of {processes} processes x 10 fds (built in {built:.1f} s); "
                 f"about {tasks} tasks and {fds} descriptors on the machine", ""]
        if not ONLY_PROCFS:
            lines += table(f"ps, {processes} processes (us per task)", ["ps", "aux"],
                           [*kpeek("ps"), *kpeek("ps", "--json")], repeat, "us/task", tasks)
            lines.append("")
        bpf_rows = () if ONLY_PROCFS else (
            ("raw BPF iterator read (load + read, no model)", [sys.executable, "-c", RAW_READ]),
            (RAW_ALL_ROW, [sys.executable, "-c", RAW_READ_ALL]),
            *kpeek("files", "--json", "--source", "bpf"),
            *kpeek("files", "--source", "bpf"),
        )
        lines += table(
            f"files, whole system, {processes} processes (us per fd)", ["lsof", "-n", "-P"],
            [
                *bpf_rows,
                *(() if SKIP_PROCFS else kpeek("files", "--json", "--source", "procfs")),
                *(() if SKIP_PROCFS else kpeek("files", "--source", "procfs")),
            ],
            repeat, "us/fd", fds,
        )  # fmt: skip
        if not ONLY_PROCFS:
            lines += cpu_floor(RAW_ALL_ROW, "kpeek files --json --source bpf")
        return lines
    finally:
        fam.close()


RAW_ALL_ROW = "raw read of all 4 iterators files uses (+ roots, maps)"


def cpu_floor(raw: str, row: str, goal: float = 1.5) -> list[str]:
    """Whether ``row`` can be within ``goal`` times the wall time of ``raw``
    on this machine at all: a command that spends C CPU seconds cannot end
    sooner than C / (CPUs it may run on), however well it overlaps."""
    cpus = len(os.sched_getaffinity(0))
    raw_s, _ = BEST[raw]
    wall, cpu = BEST[row]
    return [f"  {goal}x of the raw read is {goal * raw_s:.3f} s; {row!r} spends {cpu:.3f} CPU s, "
            f"which {cpus} CPUs cannot give in less than {cpu / cpus:.3f} s "
            f"({cpu / cpus / raw_s:.2f}x the raw read; best wall {wall / raw_s:.2f}x)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", default="1000,5000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=("startup", "scale"))
    ap.add_argument("--before", metavar="SRC", action="append", default=[],
                    help="also time kpeek from this source tree (PYTHONPATH), e.g. a main checkout")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--bpf-only", action="store_true", help="leave out the procfs source's rows")
    ap.add_argument("--procfs-only", action="store_true",
                    help="at scale, only lsof and the procfs source's rows (no ps, no BPF)")
    args = ap.parse_args()
    BEFORE.extend(args.before)
    global SKIP_PROCFS
    SKIP_PROCFS = args.bpf_only
    global ONLY_PROCFS
    ONLY_PROCFS = args.procfs_only
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    lines = [
        f"kpeek bench_cli  {time.strftime('%Y-%m-%d %H:%M:%S')}  kernel {platform.release()}  "
        f"cpus {os.cpu_count()}  load {os.getloadavg()[0]:.1f}",
        "",
    ]
    try:
        if args.only != "scale":
            block = startup(max(args.repeat, 5))
            print("\n".join(block), flush=True)
            lines += [*block, ""]
        if args.only != "startup":
            for n in map(int, args.processes.split(",")):
                block = at_scale(n, args.repeat)
                print("\n".join(block), flush=True)
                lines += [*block, ""]
    finally:
        for folder in CACHES.values():
            shutil.rmtree(folder, ignore_errors=True)
    text = "\n".join(lines)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
