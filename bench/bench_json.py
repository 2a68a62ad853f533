"""files --json's two costs in one process, before and after, on a family of N
processes x 10 fds: encoding (the standard library's json vs jsonout's orjson
path, same bytes) and building the snapshot and document under the default
garbage-collector thresholds vs the CLI's (frozen imports, gen0 at 100,000).

    .venv/bin/python bench/bench_json.py 2000
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from family import Family
from kpeek import jsonout
from kpeek.render.tables import files_document
from kpeek.sources import take_snapshot


def old(doc):
    return json.dumps(doc, default=jsonout._default, ensure_ascii=True,
                      separators=(",", ":")).encode()


def main() -> None:
    fam = Family(int(sys.argv[1]), 10)
    try:
        snap = take_snapshot("bpf", threads=False)
        doc = files_document(snap, sorted(snap.processes(), key=lambda t: t.pid))
        for _ in range(3):
            t = time.perf_counter()
            a = old(doc)
            t1 = time.perf_counter()
            b = jsonout.encode(doc)
            t2 = time.perf_counter()
            print(f"fds {len(snap.fds)} bytes {len(a)} stdlib {t1 - t:.3f} s  "
                  f"jsonout {t2 - t1:.3f} s  same bytes {a == b}", flush=True)
        for mode in ("default", "frozen+100k", "default", "frozen+100k"):
            gc.collect()
            gc.unfreeze()
            gc.set_threshold(700, 10, 10)
            if mode != "default":
                gc.freeze()
                gc.set_threshold(100_000, 50, 50)
            t = time.perf_counter()
            s = take_snapshot("bpf", threads=False)
            files_document(s, sorted(s.processes(), key=lambda t: t.pid))
            print(f"gc {mode}: snapshot+document {time.perf_counter() - t:.3f} s", flush=True)
            del s
    finally:
        fam.close()


if __name__ == "__main__":
    main()
