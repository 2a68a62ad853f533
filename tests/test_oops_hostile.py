"""kpeek oops on hostile input: binary junk, a 100 MB log, very long lines.

Parsing must finish in bounded time and never raise; reports inside the
junk must still be found.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from kpeek.reports import parse_reports
from kpeek.reports.parse import parse_log

WARNING_REPORT = """\
[  200.000000] ------------[ cut here ]------------
[  200.000001] WARNING: CPU: 0 PID: 77 at fs/pipe.c:123 pipe_write+0x1f/0x300
[  200.000002] Modules linked in:
[  200.000003] CPU: 0 PID: 77 Comm: writer Not tainted 6.1.0 #1
[  200.000004] RIP: 0010:pipe_write+0x1f/0x300
[  200.000005] Call Trace:
[  200.000006]  <TASK>
[  200.000007]  vfs_write+0x2b1/0x4a0
[  200.000008]  ksys_write+0x9c/0x150
[  200.000009]  do_syscall_64+0x35/0x80
[  200.000010]  </TASK>
[  200.000011] ---[ end trace 0000000000000000 ]---
"""


@pytest.mark.timeout(60)
def test_binary_junk_never_crashes():
    rng = random.Random(4)
    junk = rng.randbytes(4 << 20).decode("utf-8", "surrogateescape")
    start = time.monotonic()
    assert isinstance(parse_reports(junk), list)
    # Junk with report markers and a real report spliced in.
    spliced = junk[: 1 << 20] + "\nBUG: KASAN:\x00\xff\n" + WARNING_REPORT + junk[1 << 20:]
    titles = [r.title for r in parse_reports(spliced)]
    assert "WARNING in pipe_write" in titles
    assert time.monotonic() - start < 20


@pytest.mark.timeout(60)
def test_very_long_lines():
    long_line = "x" * (8 << 20)
    text = (long_line + "WARNING: tail\n" + "BUG: " + "y" * (4 << 20) + "\n"
            + "\n".join(["WARNING: " + "z" * 100_000] * 50) + "\n" + WARNING_REPORT)
    start = time.monotonic()
    reports = parse_reports(text)
    assert time.monotonic() - start < 20
    assert reports[-1].title == "WARNING in pipe_write"
    assert all(len(r.title) <= 120 for r in reports)


@pytest.mark.timeout(60)
def test_dense_start_markers_are_bounded():
    # Every line looks like a report start (but is suppressed) or is one.
    text = "[  1.0] DEBUG: hello BUG: world\n" * 300_000 + "WARNING: a\n" * 50_000
    start = time.monotonic()
    result = parse_log(text)
    assert time.monotonic() - start < 30
    assert result.truncated  # the work bound was hit, and says so


@pytest.mark.timeout(120)
def test_100mb_log_through_the_cli(tmp_path):
    noise = "[  123.456789] usb 1-1: new high-speed USB device number 2 using xhci_hcd\n"
    chunk = noise * ((10 << 20) // len(noise))  # 10 MiB of ordinary console noise
    path = tmp_path / "big.log"
    with open(path, "w") as f:
        for i in range(10):
            f.write(chunk)
            if i in (3, 9):
                f.write(WARNING_REPORT)
    assert os.path.getsize(path) > 100 << 20
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "kpeek", "oops", "--summary", str(path)],
                         capture_output=True, text=True, timeout=110)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("WARNING in pipe_write") == 2
    assert elapsed < 60, f"100 MB log took {elapsed:.1f} s"


@pytest.mark.timeout(60)
def test_hundreds_of_reports_with_caller_ids():
    body = WARNING_REPORT.splitlines()
    parts = []
    for task in range(400):
        parts += [ln.replace("] ", f"][ T{1000 + task}] ", 1) for ln in body]
    start = time.process_time()
    result = parse_log("\n".join(parts) + "\n")
    assert time.process_time() - start < 15
    assert not result.truncated
    assert len(result.reports) == 400
    assert {r.title for r in result.reports} == {"WARNING in pipe_write"}
    assert len({r.context for r in result.reports}) == 400
