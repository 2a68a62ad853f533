"""Snapshots under fork/exit churn are one consistent picture: every descriptor
names a process and an open file in the same snapshot, every open file has a
holder, and what went away is counted (issue: 208 of 330 BPF documents named
holders whose pid was not in processes)."""

from __future__ import annotations

import json
import time

import pytest

from capabilities import require
from churn import Churn, dangling, dangling_in_document
from kpeek.render.tables import files_document
from kpeek.sources import take_snapshot

# (source, snapshots, seconds at most). /proc snapshots cost far more on a busy
# machine (one took 30 s at load 15): bench/soak.py runs both sources at length.
PLANS = [("bpf", 200, 40)]


@pytest.mark.timeout(300)  # one whole-system snapshot can take seconds at load 15+
@pytest.mark.parametrize(("source", "rounds", "budget_s"), PLANS)
def test_snapshots_under_churn_have_no_dangling_references(source, rounds, budget_s, tmp_path):
    require("root", "bpf")
    target = tmp_path / "opened"
    target.write_text("x")
    churn = Churn(str(target))
    try:
        start, done, counted, bad = time.monotonic(), 0, 0, []
        # at least 10 snapshots even past the budget: a machine with thousands of
        # other processes makes each one slow, and the point is consistency
        while done < rounds and (done < 10 or time.monotonic() - start < budget_s):
            snap = take_snapshot(source)
            bad += dangling(snap)
            doc = json.loads(json.dumps(files_document(snap, list(snap.processes()))))
            bad += dangling_in_document(doc)
            counted += snap.vanished
            done += 1
    finally:
        churn.stop()
    assert done >= 10
    assert not bad, bad[:10]
