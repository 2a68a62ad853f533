"""Benchmark: post-mortem verbs on a dump, kpeek (no debuginfo) beside drgn with the
full -dbg vmlinux, each a fresh process as a user would run it.

Run: .venv/bin/python bench/bench_post.py            (boots the lab guest for its dumps)
     .venv/bin/python bench/bench_post.py DUMP VMLINUX PID ADDR
Writes bench/results/bench_post.txt.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bench_post.txt"
REPEAT = 3

DRGN = """
import sys, drgn
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
what, arg = sys.argv[3], int(sys.argv[4], 0)
if what == "kmem":
    from drgn.helpers.linux.slab import slab_object_info
    print(slab_object_info(prog, arg))
elif what == "bt":
    print(prog.stack_trace(arg))
else:
    from drgn.helpers.linux.module import for_each_module
    print([m.name.string_() for m in for_each_module(prog)])
"""


def best(argv: list[str]) -> float:
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return min(times)


def lab() -> tuple[str, str, int, int, tempfile.TemporaryDirectory]:
    sys.path.insert(0, str(ROOT / "tests"))
    from lab.fixtures import take_lab_dumps
    from lab.kernels import debug_vmlinux

    tmp = tempfile.TemporaryDirectory()
    d = take_lab_dumps(Path(tmp.name))
    s = d.truth.scenario
    return (str(d.elf), str(debug_vmlinux(d.tree)), s["kpeek_abba.task_a_pid"],
            s["kpeek_abba.task_a"], tmp)


def main() -> None:
    if len(sys.argv) == 5:
        dump, vmlinux, pid, addr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 0)
        keep = None
    else:
        dump, vmlinux, pid, addr, keep = lab()
    kpeek = [sys.executable, "-m", "kpeek", "-c", dump]
    drgn = [sys.executable, "-c", DRGN, dump, vmlinux]
    rows = []
    for verb, ours, arg in (("kmem ADDR", ["kmem", hex(addr)], ("kmem", hex(addr))),
                            ("bt PID", ["bt", str(pid)], ("bt", str(pid))),
                            ("mod", ["mod"], ("mod", "0"))):
        k = best(kpeek + ours)
        g = best(drgn + list(arg))
        rows.append(f"{verb:<10} kpeek {k:6.2f} s   drgn+debuginfo {g:6.2f} s   "
                    f"kpeek is {g / k:4.1f}x faster")
    size = Path(dump).stat().st_size / (1 << 20)
    load = os.getloadavg()[0]
    text = (f"dump {Path(dump).name} ({size:.0f} MiB), best of {REPEAT}, fresh process each, "
            f"load average {load:.1f} on {os.cpu_count()} CPUs\n")
    text += "\n".join(rows) + "\n"
    sys.stdout.write(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    if keep is not None:
        keep.cleanup()


if __name__ == "__main__":
    main()
