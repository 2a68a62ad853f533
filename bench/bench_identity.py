"""Benchmark: the open-file identity of N distinct opens of one file.

Holder processes open the same file N times in all, up to 10,000 each
(N open file descriptions of one inode: nothing but the kernel's struct
file address tells them apart). For each N, times in one run, the best of ``--repeat``:

* ``kpeek files --json PID`` on the BPF source (identity is the file
  address: a hash, linear) and on the /proc source (kcmp gives only an
  order: a sort, N log N comparisons);
* ``kpeek doctor --json PID`` (BPF, as it runs by default);
* the peer, ``lsof -n -P -p PID,...``, which does not tell open files apart.

and prints µs per open: a flat figure is linear time. Results go to
bench/results/bench_identity.txt.

Run as root, with PYTHONDONTWRITEBYTECODE unset:
    .venv/bin/python bench/bench_identity.py [--opens 5000,10000,20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_doctor import run_cli

RESULTS = Path(__file__).parent / "results" / "bench_identity.txt"
PER_HOLDER = 10_000  # opens per process (a hard limit of 20,000 fds is common)
HOLDER = """
import os, sys, time
fds = [os.open(sys.argv[1], os.O_RDONLY) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
time.sleep(3600)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--opens", default="5000,10000,20000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    kpeek = str(Path(sys.executable).with_name("kpeek"))
    lsof = shutil.which("lsof")
    counts = [int(n) for n in args.opens.split(",")]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the holders inherit it
    out = [f"bench_identity  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  "
           f"kernel {os.uname().release}  load {os.getloadavg()[0]:.1f}  "
           f"{sum(1 for p in os.listdir('/proc') if p.isdigit())} processes running "
           "(doctor snapshots them all)",
           f"command: .venv/bin/python bench/bench_identity.py --opens {args.opens} "
           f"--repeat {args.repeat}",
           "", f"{'opens':>6}  {'command':<44} {'CPU s':>7} {'us/open':>8}"]
    with tempfile.NamedTemporaryFile(prefix="kpeek-identity-") as target:
        for n in counts:
            each = [PER_HOLDER] * (n // PER_HOLDER) + ([n % PER_HOLDER] if n % PER_HOLDER else [])
            holders = [subprocess.Popen([sys.executable, "-c", HOLDER, target.name, str(k)],
                                        stdout=subprocess.PIPE, text=True) for k in each]
            try:
                for h in holders:
                    assert h.stdout.readline().strip() == "ready"
                pids = [str(h.pid) for h in holders]
                jobs = [("kpeek files --json --source bpf PID...",
                         [kpeek, "files", "--json", "--source", "bpf", *pids]),
                        ("kpeek files --json --source procfs PID...",
                         [kpeek, "files", "--json", "--source", "procfs", *pids]),
                        ("kpeek doctor --json PID... (bpf)", [kpeek, "doctor", "--json", *pids])]
                if lsof:
                    jobs.insert(0, ("peer: lsof -n -P -p PID,...",
                                    [lsof, "-n", "-P", "-p", ",".join(pids)]))
                for label, argv in jobs:
                    done, _wall, cpu = run_cli(argv, args.repeat)
                    if done.returncode not in (0, 1):
                        raise SystemExit(f"{label}: exit {done.returncode}: {done.stderr[:300]}")
                    if "files --json" in label:  # every open is its own open file
                        assert done.stdout.count('"path":') >= n, label
                    out.append(f"{n:>6}  {label:<44} {cpu:>7.3f} {cpu / n * 1e6:>8.1f}")
            finally:
                for h in holders:
                    h.kill()
                    h.wait()
    text = "\n".join(out) + "\n"
    print(text, end="")
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
