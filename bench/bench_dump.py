"""Benchmark: open a crash dump and list its tasks, kpeek (no debuginfo: kallsyms
and BTF from the dump's memory) against drgn with the kernel's full debuginfo
(the -dbg package's vmlinux), on the same dump, each in a fresh process.

  .venv/bin/python bench/bench_dump.py                 # boots the lab guest for a dump
  .venv/bin/python bench/bench_dump.py --dump vmcore   # a dump of the lab's kernel

Both sides do the same work: open the file, find every task, read its pid,
comm and state. kpeek also runs as the CLI (`kpeek -c DUMP ps --json`).
Wall and CPU (user+sys) times are printed: on a shared machine CPU time is the
steadier figure. Writes bench/results/bench_dump.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

KPEEK_WALK = """
import sys
from kpeek.kernel.sched import state_letter
from kpeek.targets.dump import open_dump
k = open_dump(sys.argv[1])
n = 0
for pid, address in k.tasks.addresses().items():
    t = k.object("struct task_struct", address)
    t.member("comm").value()
    state_letter(t.member("__state").value_int(), t.member("exit_state").value_int())
    n += 1
print(n)
"""

DRGN_WALK = """
import sys, drgn
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.sched import task_state_to_char
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
n = 0
for t in for_each_task(prog):
    int(t.pid); t.comm.string_(); task_state_to_char(t)
    n += 1
print(n)
"""


def timed(cmd: list[str], runs: int) -> tuple[float, float, str]:
    """(median wall s, median CPU s, last stdout) of ``cmd`` run ``runs`` times."""
    walls, cpus, out = [], [], ""
    for _ in range(runs):
        before = os.times()
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append((after.children_user - before.children_user)
                    + (after.children_system - before.children_system))
        out = done.stdout
    return statistics.median(walls), statistics.median(cpus), out


def lab_dump(memory: str, where: Path) -> tuple[Path, Path]:
    """A fresh ELF dump of the lab guest, and the kernel's debug vmlinux."""
    from lab.fixtures import take_lab_dumps
    from lab.kernels import debug_vmlinux

    dumps = take_lab_dumps(where, memory=memory)
    return dumps.elf, debug_vmlinux(dumps.tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", type=Path, help="an ELF or kdump file of the lab kernel")
    parser.add_argument("--vmlinux", type=Path, help="its debug vmlinux (default: fetched)")
    parser.add_argument("--memory", default="512M", help="guest memory when booting the lab")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kpeek-bench-dump-") as tmp:
        dump, vmlinux = args.dump, args.vmlinux
        if dump is None:
            dump, fetched = lab_dump(args.memory, Path(tmp))
            vmlinux = vmlinux or fetched
        elif vmlinux is None:
            from lab.kernels import debian_kernel, debug_vmlinux

            vmlinux = debug_vmlinux(debian_kernel())
        py = sys.executable
        rows = [
            ("kpeek open + task walk", timed([py, "-c", KPEEK_WALK, str(dump)], args.runs)),
            ("kpeek -c DUMP ps --json", timed([py, "-m", "kpeek", "-c", str(dump), "ps",
                                               "--json"], args.runs)),
            ("drgn + debuginfo walk", timed([py, "-c", DRGN_WALK, str(dump), str(vmlinux)],
                                            args.runs)),
        ]
        size = dump.stat().st_size
    tasks = rows[0][1][2].strip()
    drgn_wall, drgn_cpu = rows[2][1][0], rows[2][1][1]
    lines = [f"dump: {size / 2**20:.0f} MiB ({dump.name}), {tasks} tasks, median of "
             f"{args.runs} runs, each a fresh process; load average "
             f"{os.getloadavg()[0]:.1f}",
             f"{'':26}{'wall s':>8}{'cpu s':>8}{'drgn/kpeek (cpu)':>18}"]
    for name, (wall, cpu, _) in rows:
        lines.append(f"{name:26}{wall:8.2f}{cpu:8.2f}{drgn_cpu / cpu:17.2f}x"
                     f"   (wall {drgn_wall / wall:.2f}x)")
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / "bench_dump.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
