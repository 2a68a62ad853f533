"""kpeek ps on real tasks: filters, thread listing, kernel stacks, both sources."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from capabilities import require
from kpeek.cli import main
from scenarios import family

# A process blocked reading an empty pipe, with one extra thread.
PIPE_READER = """
import threading
r, w = os.pipe()
threading.Thread(target=hold, daemon=True).start()
if os.fork() == 0:
    report(pid=os.getpid(), parent=os.getppid())
os.read(r, 1)
"""


def _until_asleep_in_read(pid: int) -> None:
    """The child reports before its parent reaches read(): wait for the parent."""
    deadline = time.monotonic() + 20
    while not Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_read"):
        assert time.monotonic() < deadline, "the reader never blocked in read()"
        time.sleep(0.02)


@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_stacks_threads_and_filters(capsys, source):
    require("root")
    if source == "bpf":
        require("bpf")
    with family(PIPE_READER) as fam:
        reader = fam.info["parent"]
        _until_asleep_in_read(reader)
        argv = ["ps", "--json", "--stacks", "-t", "-p", str(reader), "--source", source]
        assert main(argv) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["source"] == source
        tasks = {t["pid"]: t for t in doc["tasks"]}
        assert len(tasks) == 2 and all(t["tgid"] == reader for t in tasks.values())
        leader = tasks[reader]
        assert leader["state"] == "S" and leader["state_name"] == "sleeping"
        # pipe_read, or anon_pipe_read on kernels since 6.15
        assert leader["wchan"].endswith("pipe_read")
        assert leader["kernel_stack"][0].startswith(leader["wchan"] + "+0x")

        assert (
            main(["ps", "--json", "-s", "S", "-c", "pyth*", "-p", str(reader), "--source", source])
            == 0
        )
        (only,) = json.loads(capsys.readouterr().out)["tasks"]
        assert only["pid"] == reader

        assert main(["ps", "--stacks", "-p", str(reader), "--source", source]) == 0
        out = capsys.readouterr().out
        assert "pipe_read+0x" in out and f"source: {source}" in out
