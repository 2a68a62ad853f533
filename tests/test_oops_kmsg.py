"""kpeek oops on the live kernel log: /dev/kmsg read without blocking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from capabilities import require
from kpeek.reports import parse_reports, read_kmsg
from kpeek.reports.kmsg import kmsg_record_to_line


def test_record_conversion_keeps_caller_id():
    line = kmsg_record_to_line(b"4,1234,5140900,-,caller=T77;WARNING: something\n SUBSYSTEM=x")
    assert line == "[    5.140900][   T77] WARNING: something"
    assert kmsg_record_to_line(b"garbage without separator") is None
    assert kmsg_record_to_line(b"6,1,notanumber,-;x") is None


@pytest.mark.timeout(30)
def test_read_kmsg_returns_without_waiting_and_sees_new_messages():
    require("root")
    marker = f"kpeek-test-marker-{os.getpid()}-{time.monotonic_ns()}"
    # A benign line in the kernel log (not a report), written the way
    # systemd and friends log to it.
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(f"<6>{marker}\n")
    start = time.monotonic()
    text = read_kmsg()
    assert time.monotonic() - start < 10  # O_NONBLOCK: EAGAIN ends the read
    assert marker in text
    line = next(ln for ln in text.splitlines() if marker in ln)
    assert line.startswith("[") and "] " in line
    assert isinstance(parse_reports(text), list)


@pytest.mark.timeout(60)
def test_cli_live_log():
    require("root")
    res = subprocess.run([sys.executable, "-m", "kpeek", "oops", "--json"],
                         capture_output=True, text=True, timeout=50)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == "kpeek.oops/1"
    assert doc["source"] == "/dev/kmsg"
    assert doc["count"] == len(doc["reports"])


def test_live_symbolization_with_kallsyms():
    require("root")
    from kpeek.kernel.symbols import load_kallsyms
    from kpeek.reports.symbolize import symbolize_log

    syms = load_kallsyms()
    addr = syms.address_of("vfs_read")
    if not addr:
        pytest.skip("kallsyms shows no addresses here")
    out = symbolize_log(f"[  1.000000]  [<{addr + 5:016x}>]\n", syms.symbolize)
    assert f"[<{addr + 5:016x}>] vfs_read+0x5/" in out
    # and the parser then names the frame
    log = ("[  1.0] WARNING: CPU: 0 PID: 1 at fs/read_write.c:1 x+0x1/0x2\n"
           "[  1.1] Call Trace:\n" + out)
    (report,) = parse_reports(log)
    assert report.title == "WARNING in vfs_read"


@pytest.mark.timeout(60)
def test_unprivileged_live_read_says_what_is_needed():
    require("root")
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*as_nobody, "-c", "import kpeek"], capture_output=True, timeout=50,
                           cwd="/")
    if probe.returncode != 0:
        pytest.skip("the checkout is not readable by an unprivileged user here")
    with open("/proc/sys/kernel/dmesg_restrict") as f:
        restricted = f.read().strip() == "1"
    res = subprocess.run([*as_nobody, "-m", "kpeek", "oops", "--summary"],
                         capture_output=True, text=True, timeout=50, cwd="/")
    if restricted:
        assert res.returncode == 3
        assert "CAP_SYSLOG" in res.stderr and "Traceback" not in res.stderr
    else:
        assert res.returncode == 0, res.stderr
