"""Benchmark: BTF parse and lookups, kallsyms, and typed reads of live memory.

Run: .venv/bin/python bench/bench_btf.py   (root for the kallsyms/live rows)

The CLI rows time `kpeek struct task_struct` and `pahole task_struct` in turn,
each a fresh process, in CPU seconds (steadier than wall time on a shared
machine). Run with PYTHONDONTWRITEBYTECODE unset, as an installed kpeek has
its bytecode compiled.
Writes bench/results/bench_btf.txt.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kpeek.kernel.btf import VMLINUX_BTF, Btf, Kind

RESULTS = Path(__file__).parent / "results" / "bench_btf.txt"


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cpu_of(cmd: list[str]) -> float:
    """CPU seconds (user + system) of one run of ``cmd``, output thrown away."""
    pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=[
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return usage.ru_utime + usage.ru_stime


def cli_rows(repeat: int = 7) -> list[tuple[str, str]]:
    """`kpeek struct task_struct` against `pahole task_struct`, turn about, in
    fresh processes: best CPU seconds of each. kpeek keeps no cache on disk
    (the BTF is indexed in every run), so every run is a cold one."""
    if not shutil.which("pahole"):
        return [("kpeek struct task_struct vs pahole", "skipped: no pahole")]
    kpeek = [sys.executable, "-m", "kpeek", "struct", "task_struct"]
    peer = ["pahole", "task_struct"]
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(cpu_of(kpeek))
        theirs.append(cpu_of(peer))
    return [(f"CPU, best of {repeat}: {' '.join(peer)} (peer)", f"{min(theirs) * 1e3:.0f} ms"),
            (f"CPU, best of {repeat}: python3 -m kpeek struct task_struct",
             f"{min(ours) * 1e3:.0f} ms = {min(ours) / min(theirs):.2f}x pahole")]


def main() -> None:
    rows: list[tuple[str, str]] = []
    with open(VMLINUX_BTF, "rb") as f:
        data = f.read()
    rows.append(("vmlinux BTF size", f"{len(data) / 1e6:.1f} MB"))
    parse = [best_of(lambda: Btf(data), 1) for _ in range(5)]
    btf = Btf(data)
    rows.append(("types", f"{len(btf) - 1}"))
    rows.append(("full parse, no cache (min / median of 5)",
                 f"{min(parse) * 1e3:.0f} / {statistics.median(parse) * 1e3:.0f} ms"))
    find = []
    for _ in range(5):
        fresh = Btf(data)
        t = time.perf_counter()
        fresh.find("struct task_struct")
        find.append(time.perf_counter() - t)
    rows.append(("first find('struct task_struct') after a parse", f"{min(find) * 1e3:.1f} ms"))
    rows += cli_rows()
    names = [t.name for t in btf.types() if t.kind == Kind.STRUCT and t.name]
    random.seed(1)
    sample = random.sample(names, 2000)
    fresh = Btf(data)
    t = time.perf_counter()
    for n in sample:
        fresh.lookup(f"struct {n}")
    per = (time.perf_counter() - t) / 2000
    rows.append(("lookup('struct NAME'), first time", f"{per * 1e6:.1f} µs"))
    task = btf.lookup("struct task_struct")
    t = time.perf_counter()
    for _ in range(10000):
        task.member("se.vruntime")
    per = (time.perf_counter() - t) / 10000
    rows.append(("member('se.vruntime') on task_struct", f"{per * 1e6:.1f} µs"))
    structs = [t for t in btf.types() if t.kind in (Kind.STRUCT, Kind.UNION)]
    t = time.perf_counter()
    count = 0
    for s in structs:
        for m in s.members:
            btf.declaration(m.type_id, m.name)
            count += 1
    rows.append((f"decode + render all {count} members of {len(structs)} structs/unions",
                 f"{time.perf_counter() - t:.2f} s"))

    if os.geteuid() == 0:
        from kpeek.kernel.symbols import Kallsyms

        t = time.perf_counter()
        syms = Kallsyms.load()
        el = time.perf_counter() - t
        rows.append(("kallsyms load", f"{el * 1e3:.0f} ms ({len(syms)} symbols)"))
        lo, hi = syms.text_range
        addrs = [random.randrange(lo, hi) for _ in range(100000)]
        t = time.perf_counter()
        for a in addrs:
            syms.format(a)
        per = (time.perf_counter() - t) / len(addrs)
        rows.append(("kallsyms format(addr)", f"{per * 1e6:.2f} µs"))
        try:
            from kpeek.sources.bpf.tasks import task_addresses
            from kpeek.targets.live import open_live

            kernel = open_live()
            t = time.perf_counter()
            tasks = task_addresses()
            rows.append(("task_addresses() (BPF iter/task)",
                         f"{(time.perf_counter() - t) * 1e3:.0f} ms ({len(tasks)} tasks)"))
            t = time.perf_counter()
            for address in tasks.values():
                obj = kernel.object(task, address)
                obj.member("pid").value()
                obj.member("comm").value()
            el = time.perf_counter() - t
            rows.append(("live pid+comm of every task (one read per task_struct)",
                         f"{el * 1e3:.0f} ms ({el / max(len(tasks), 1) * 1e6:.0f} µs/task)"))
        except Exception as e:  # the live rows are optional
            rows.append(("live reads", f"skipped: {e}"))
    width = max(len(r[0]) for r in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n"
    sys.stdout.write(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
