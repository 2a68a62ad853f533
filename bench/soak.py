"""Soak: N snapshots (default 1000) of the whole system under bounded fork/exit
churn, from each source; counts inconsistent documents, tracebacks and hangs.

    sudo .venv/bin/python bench/soak.py [N]
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from churn import Churn, dangling
from kpeek.sources import take_snapshot


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    churn = Churn("/etc/hostname")
    failed = 0
    try:
        for source in ("bpf", "procfs"):
            start = time.monotonic()
            bad = errors = vanished = slowest = 0.0
            for _ in range(n):
                t0 = time.monotonic()
                try:
                    snap = take_snapshot(source)
                except Exception:
                    errors += 1
                    traceback.print_exc(limit=3)
                    continue
                slowest = max(slowest, time.monotonic() - t0)
                bad += bool(dangling(snap))
                vanished += snap.vanished
            took = time.monotonic() - start
            print(f"{source:7} {n} snapshots in {took:.0f} s: {int(bad)} inconsistent, "
                  f"{int(errors)} tracebacks, slowest {slowest:.2f} s, "
                  f"{int(vanished)} descriptors counted as vanished")
            failed += int(bad + errors)
    finally:
        churn.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
