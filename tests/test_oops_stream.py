"""Kernel logs read as a stream: the same reports as in one piece, bounded memory,
and the inputs that used to hang or exhaust memory (binary, devices, endless)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys

import pytest

from corpus import corpus_logs
from kpeek.reports.parse import parse_log
from kpeek.reports.stream import parse_stream
from peakmem import wait_with_peak


def _corpus_logs() -> list[bytes]:
    return corpus_logs()


def _mixed_log(seed: int, count: int) -> bytes:
    """Corpus logs with runs of ordinary lines between them, as a long console log."""
    rnd = random.Random(seed)
    logs = _corpus_logs()
    parts = []
    for log in rnd.sample(logs, count):
        parts.append(log)
        parts.append(
            b"".join(
                b"[ %d.000000] ordinary line %d\n" % (i, i) for i in range(rnd.randrange(0, 5000))
            )
        )
    return b"\n".join(parts)


def _summary(reports):
    return [(r.start_line, r.end_line, r.title, r.corrupted) for r in reports]


@pytest.mark.parametrize("chunk", [1 << 14, 1 << 16, 1 << 20])
def test_stream_finds_what_one_piece_finds(chunk):
    data = _mixed_log(seed=chunk, count=60)
    whole = parse_log(data.decode("utf-8", "surrogateescape"))
    assert not whole.truncated and len(whole.reports) >= 40
    streamed = parse_stream(io.BytesIO(data), "log", chunk=chunk)
    assert _summary(streamed.reports) == _summary(whole.reports)


def _run(args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "kpeek", *args], capture_output=True, text=True, timeout=120, **kw
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", sys.executable])
def test_binary_input_is_one_line_exit_2(path):
    p = _run(["oops", path])
    assert p.returncode == 2 and "not a kernel log" in p.stderr
    assert p.stderr.count("\n") == 1 and p.stdout == ""


@pytest.mark.timeout(120)
def test_kmsg_given_as_a_file_does_not_block():
    p = _run(["oops", "/dev/kmsg", "--summary"])
    assert p.returncode in (0, 3), p.stderr  # 3: not permitted to read the log
    assert "Traceback" not in p.stderr


@pytest.mark.timeout(120)
def test_fifo_without_writer_does_not_block(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    p = _run(["oops", str(fifo)])
    assert p.returncode == 0 and "no kernel report" in p.stdout


@pytest.mark.timeout(120)
def test_no_report_says_so(tmp_path):
    log = tmp_path / "quiet.log"
    log.write_text("[    0.000000] Linux version 6.1.0\n[    1.000000] all is well\n")
    p = _run(["oops", str(log)])
    assert p.returncode == 0 and f"no kernel report in {log}" in p.stdout


@pytest.mark.timeout(300)
def test_a_big_log_in_bounded_memory(tmp_path):
    """64 MB of ordinary lines with reports inside: read under 100 MB of memory
    (the whole-file reader held several times the file)."""
    log = tmp_path / "big.log"
    logs = _corpus_logs()[:5]
    noise = b"".join(
        b"[ %d.000000] eth0: link up, an ordinary line %d\n" % (i, i) for i in range(50_000)
    )
    with log.open("wb") as f:
        i = 0
        while f.tell() < 64 << 20:
            f.write(noise)
            f.write(logs[i % len(logs)] + b"\n")
            i += 1
    # VmHWM, not ru_maxrss: that one keeps the forking parent's size across exec
    code = (
        "import sys\n"
        "from kpeek.cli import main\n"
        "rc = main(['oops', '--summary', sys.argv[1]])\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
        "print(hwm[0].split()[1], file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(log)], capture_output=True, text=True, timeout=280
    )
    assert p.returncode == 0, p.stderr
    peak_kb = int(p.stderr.strip().splitlines()[-1])
    assert peak_kb < 100 * 1024, f"peak {peak_kb} KB"
    assert p.stdout.count("\n") > 5  # the reports were found


@pytest.mark.timeout(120)
def test_endless_stdin_stops(tmp_path):
    """An endless stdin is read in bounded memory and refused at the input limit;
    here the limit is made small through the stream reader itself."""
    data = b"[ 1.0] hello\n" * 100_000
    with pytest.raises(Exception) as err:
        parse_stream(io.BytesIO(data), "stdin", chunk=1 << 16, max_input=1 << 20)
    assert "larger than" in str(err.value)


@pytest.mark.timeout(300)
def test_endless_stdin_through_the_cli_is_one_line_exit_2_in_bounded_memory(tmp_path):
    """`yes ... | kpeek oops -` as a user runs it: refused at the 1 GiB input
    limit with one line and exit 2, never holding more than a few windows."""
    yes = subprocess.Popen(
        ["yes", "[    1.000000] an ordinary console line"], stdout=subprocess.PIPE
    )
    err_path = tmp_path / "stderr"
    try:
        with err_path.open("wb") as err_file:
            kpeek = subprocess.Popen(
                [sys.executable, "-m", "kpeek", "oops", "-"],
                stdin=yes.stdout,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
            )
            yes.stdout.close()  # kpeek holds the only reader now
            peak_kb = wait_with_peak(kpeek)
    finally:
        yes.kill()
        yes.wait()
    err = err_path.read_text()
    assert kpeek.returncode == 2, err
    assert err.count("\n") == 1 and "larger than" in err, err
    assert 0 < peak_kb < 200 * 1024, f"{peak_kb} KB"
