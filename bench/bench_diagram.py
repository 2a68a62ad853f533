"""Benchmark: diagram layout by size, and the cost of tracing a program.

Run: .venv/bin/python bench/bench_diagram.py
Writes bench/results/bench_diagram.txt.

Rows 1: N processes with 10 descriptors each (a parent and N-1 forked
children, 7 files each): snapshot (procfs), DOT build, Graphviz SVG layout.
Rows 2: a shell loop that opens and closes a file 300 times, run plain and
under `kpeek trace` (one snapshot per recorded syscall), and the HTML page.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kpeek.render.diagram import build_dot
from kpeek.render.dot import run_dot
from kpeek.sources import procfs
from kpeek.trace.changes import describe, drop_transient
from kpeek.trace.report import to_html
from kpeek.trace.tracer import run_trace

RESULTS = Path(__file__).parent / "results" / "bench_diagram.txt"

FAMILY = """
import os, signal, sys
d = sys.argv[2]
n = int(sys.argv[1])
for i in range(n - 1):
    if os.fork() == 0:
        for k in range(7):
            os.open(f"{d}/p{i}-{k}", os.O_RDWR | os.O_CREAT, 0o600)
        signal.pause()
for k in range(7):
    os.open(f"{d}/parent-{k}", os.O_RDWR | os.O_CREAT, 0o600)
print("ready", flush=True)
signal.pause()
"""


def layout_rows() -> list[str]:
    rows = [f"{'processes':>9} {'fds':>5} {'snapshot s':>10} {'dot build s':>11} "
            f"{'svg layout s':>12} {'svg KiB':>8}"]
    for n in (1, 5, 20, 50):
        with tempfile.TemporaryDirectory() as d:
            proc = subprocess.Popen([sys.executable, "-c", FAMILY, str(n), d],
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, start_new_session=True)
            try:
                proc.stdout.readline()
                deadline = time.monotonic() + 20
                while True:
                    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                    pids = [proc.pid, *map(int, kids)]
                    if len(pids) == n and all(
                        len(os.listdir(f"/proc/{p}/fd")) >= 10 for p in pids
                    ):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("family did not start")
                    time.sleep(0.05)
                t0 = time.perf_counter()
                snap = procfs.take_snapshot(pids, threads=False)
                t1 = time.perf_counter()
                source = build_dot(snap, pids)
                t2 = time.perf_counter()
                svg = run_dot(source, "svg")
                t3 = time.perf_counter()
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        rows.append(f"{n:>9} {len(snap.fds):>5} {t1 - t0:>10.3f} {t2 - t1:>11.4f} "
                    f"{t3 - t2:>12.3f} {len(svg) / 1024:>8.0f}")
    return rows


LOOP = 'i=0; while [ $i -lt 300 ]; do exec 3</dev/null; exec 3<&-; i=$((i+1)); done'


def trace_rows() -> list[str]:
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", LOOP], check=True)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace = run_trace(["sh", "-c", LOOP])
    traced = time.perf_counter() - t0
    steps, _ = drop_transient(trace.steps)
    views = describe(steps)
    short = views[:40]
    t0 = time.perf_counter()
    page = to_html(trace, short)
    html = time.perf_counter() - t0
    return [
        f"plain run of 300 open/close pairs: {plain:.3f} s",
        f"traced: {traced:.3f} s for {len(trace.steps)} recorded steps "
        f"({traced / max(len(trace.steps), 1) * 1000:.2f} ms per step)",
        f"HTML page of {len(short)} steps: {html:.2f} s "
        f"({html / len(short) * 1000:.0f} ms per step), {len(page) / 1024:.0f} KiB",
    ]


def main() -> None:
    lines = ["# kpeek diagram and trace benchmark", f"# cpus: {os.cpu_count()}", ""]
    lines += layout_rows()
    lines += [""]
    lines += trace_rows()
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
