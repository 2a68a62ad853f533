"""kpeek oops: parsing synthetic-but-realistic logs, the verb, JSON, disassembly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kpeek.reports import parse_reports

GPF_LOG = """\
[  101.000001] some unrelated boot noise
[  101.100000] general protection fault, probably for non-canonical address \
0xdffffc0000000002: 0000 [#1] PREEMPT SMP KASAN
[  101.100001] KASAN: null-ptr-deref in range [0x0000000000000010-0x0000000000000017]
[  101.100002] CPU: 1 PID: 4242 Comm: repro Tainted: G        W          6.1.0 #1
[  101.100003] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)
[  101.100004] RIP: 0010:pipe_read+0x1a2/0x9f0
[  101.100005] Code: 48 89 df e8 00 00 00 00 48 8b 45 00 48 89 c2 48 c1 ea 03 \
<80> 3c 1a 00 0f 85 55 06 00 00 48 8b 00
[  101.100006] RSP: 0018:ffffc90001b7fb70 EFLAGS: 00010202
[  101.100007] RAX: 0000000000000010 RBX: dffffc0000000000 RCX: 0000000000000000
[  101.100008] Call Trace:
[  101.100009]  <TASK>
[  101.100010]  ? die_addr+0x3c/0xa0
[  101.100011]  vfs_read+0x1e3/0x8a0
[  101.100012]  ksys_read+0x12f/0x250
[  101.100013]  do_syscall_64+0x35/0x80
[  101.100014]  entry_SYSCALL_64_after_hwframe+0x63/0xcd
[  101.100015]  </TASK>
[  101.100016] Modules linked in:
"""


def test_gpf_title_kind_frame_address_and_taint():
    reports = parse_reports(GPF_LOG)
    assert len(reports) == 1
    r = reports[0]
    assert r.title == "general protection fault in pipe_read"
    assert r.kind == "crash"
    assert r.guilty_frame == "pipe_read"
    assert not r.corrupted
    assert r.start_line == 1
    d = r.details
    assert d.fault_address == 0xDFFFFC0000000002
    assert any("non-canonical" in n for n in d.address_notes)
    assert any("KASAN shadow of 0x10" in n for n in d.address_notes)
    assert d.pid == 4242 and d.comm == "repro" and d.cpu == 1
    assert d.taint_flags == [("W", "a WARNING was issued earlier")]
    unreliable = [f.function for f in d.call_trace if not f.reliable]
    assert unreliable == ["die_addr"]
    assert d.code is not None and d.code.data[d.code.fault_offset] == 0x80


def test_no_report_in_plain_noise():
    assert parse_reports("hello\nworld\n[ 1.0] usb 1-1: new device\n") == []


def test_cli_text_and_json(tmp_path):
    log = tmp_path / "console.log"
    log.write_text(GPF_LOG)
    run = [sys.executable, "-m", "kpeek", "oops", str(log)]
    text = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "general protection fault in pipe_read" in text
    assert "<-- fault" in text
    doc = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True,
                                    timeout=60, check=True).stdout)
    assert doc["schema"].startswith("kpeek.oops/")
    (rep,) = doc["reports"]
    assert rep["title"] == "general protection fault in pipe_read"
    fault = [i for i in rep["code"]["instructions"] if i["fault"]]
    assert len(fault) == 1 and fault[0]["text"].startswith("cmp byte ptr")


def test_cli_missing_file_is_usage_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kpeek", "oops", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("kpeek: no such file")
    assert "Traceback" not in res.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_live_kernel_pointers_are_hashed_but_poison_is_not():
    from kpeek.render.oops import pointer as _pointer
    from kpeek.reports.details import Details, interpret_address

    secret = 0xFFFF888012345678
    d = Details(fault_address=secret, address_notes=interpret_address(secret))
    assert _pointer(secret, d, show_raw=False).startswith("#")
    assert _pointer(secret, d, show_raw=True) == "0xffff888012345678"
    poison = 0x6B6B6B6B6B6B6B6B
    d = Details(fault_address=poison, address_notes=interpret_address(poison))
    assert _pointer(poison, d, show_raw=False) == "0x6b6b6b6b6b6b6b6b"
    assert _pointer(0x18, Details(), show_raw=False) == "0x0000000000000018"


def test_cli_several_reports(tmp_path):
    warning = ("[  300.000000] WARNING: CPU: 1 PID: 5 at kernel/x.c:9 other_fn+0x1/0x9\n"
               "[  300.000001] Call Trace:\n[  300.000002]  warn_slowpath_fmt+0x5/0x50\n"
               "[  300.000003]  other_fn+0x1/0x9\n[  300.000004]  caller_fn+0x5/0x50\n")
    log = tmp_path / "two.log"
    log.write_text(GPF_LOG + warning)
    base = [sys.executable, "-m", "kpeek", "oops"]
    out = subprocess.run([*base, "--summary", str(log)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "2 reports" in out
    assert "general protection fault in pipe_read" in out and "WARNING in other_fn" in out
    assert "call trace" not in out  # --summary: the table only
    one = subprocess.run([*base, "--report", "2", "--json", str(log)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    doc = json.loads(one)
    assert doc["count"] == 2 and [r["number"] for r in doc["reports"]] == [2]
    bad = subprocess.run([*base, "--report", "3", str(log)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "has 2 report(s)" in bad.stderr


INT3_LOG = """\
[   58.997439] Oops: int3: 0000 [#1] SMP PTI
[   58.998089] CPU: 0 UID: 0 PID: 323 Comm: sh Not tainted 6.15.0 #1 PREEMPT(voluntary)
[   58.998260] RIP: 0010:_Z8fakeNameiii+0x5/0x50
[   58.998400] RSP: 0018:ffffb3c2c0a1fd18 EFLAGS: 00000246
[   58.998500] Call Trace:
[   58.998510]  <TASK>
[   58.998520]  _ZN3foo3barEv+0x79/0x130
[   58.998530]  do_wp_page+0x1b4/0xa90
[   58.998590]  </TASK>
"""


def test_oops_with_a_reason_header_and_cpp_frames():
    """`Oops: int3:` (kernels since 6.9 name the trap) starts a report; C++ names
    are demangled: in frames with parameters, in titles without."""
    (r,) = parse_reports(INT3_LOG)
    assert r.title == "int3 in fakeName" and r.kind == "crash"
    frames = [f.function for f in r.details.call_trace]
    assert frames[:2] == ["foo::bar()", "do_wp_page"]
    # other reasons the same way; a bare "Oops: 0000" (inside a BUG report) is not one
    assert parse_reports(INT3_LOG.replace("int3", "alignment check"))[0].title == (
        "alignment check in fakeName")
    assert parse_reports("[ 1.0] Oops: 0000 [#1] SMP\n") == []


GO_CRASH = """\
starting server
panic: runtime error: invalid memory address or nil pointer dereference
[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a1b2c]

goroutine 1 [running]:
main.main()
\t/tmp/x.go:5 +0x1c
exit status 2
"""


def test_go_runtime_crash_is_not_a_kernel_report():
    assert parse_reports(GO_CRASH) == []
    # ... while a kernel panic next to it still is
    kernel = "[ 5.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x9\n"
    assert [r.title for r in parse_reports(GO_CRASH + kernel)] == [
        "kernel panic: Attempted to kill init!"]


HUNG = """\
[  861.152227] INFO: task kworker/u4:2:10976 blocked for more than 120 seconds.
[  861.159313]       Not tainted 6.1.0 #1
[  861.163630] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  861.171562] task:kworker/u4:2    state:D stack:0     pid:10976 ppid:2      flags:0x00004000
[  861.180000] Call Trace:
[  861.182000]  <TASK>
[  861.183000]  __schedule+0x8a3/0x2a30
[  861.184000]  schedule+0xde/0x1b0
[  861.185000]  rwsem_down_write_slowpath+0x5e1/0x1200
[  861.186000]  do_truncate+0x13c/0x200
[  861.187000]  </TASK>
"""


def test_hung_task_names_the_task_pid_and_time(tmp_path):
    (r,) = parse_reports(HUNG)
    assert (r.details.comm, r.details.pid, r.details.blocked_seconds) == (
        "kworker/u4:2", 10976, 120)
    log = tmp_path / "hung.log"
    log.write_text(HUNG)
    out = subprocess.run([sys.executable, "-m", "kpeek", "oops", str(log)], capture_output=True,
                         text=True, timeout=60).stdout
    assert "kworker/u4:2 (pid 10976)" in out and "more than 120 s" in out


def test_truncated_repeat_at_the_end_is_one_report():
    """A console that printed the report again and was cut off: one report."""
    lines = GPF_LOG.splitlines(keepends=True)
    cut = "".join(lines[1:9])[:-10] + "\n"  # the repeat stops inside a line
    reports = parse_reports(GPF_LOG + cut)
    assert len(reports) == 1
    # two complete reports stay two
    assert len(parse_reports(GPF_LOG + GPF_LOG)) == 2


def test_several_files_in_one_process(tmp_path):
    """Each FILE on its own under a heading, as when given alone; a missing one
    is one line on stderr and exit 2, the others are still shown."""
    gpf, quiet = tmp_path / "gpf.log", tmp_path / "quiet.log"
    gpf.write_text(GPF_LOG)
    quiet.write_text("[    1.000000] all is well\n")
    base = [sys.executable, "-m", "kpeek", "oops"]
    alone = subprocess.run([*base, str(gpf)], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    res = subprocess.run([*base, str(gpf), str(tmp_path / "nope"), str(quiet)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr == f"kpeek: no such file: {tmp_path / 'nope'}\n"
    assert res.stdout == (f"==> {gpf} <==\n{alone}\n==> {quiet} <==\n"
                          f"no kernel report in {quiet} (no oops, BUG, WARNING, KASAN, hang,"
                          " panic or lockdep report)\n")
    doc = json.loads(subprocess.run([*base, "--json", str(gpf), str(quiet)], capture_output=True,
                                    text=True, timeout=60, check=True).stdout)
    one = json.loads(subprocess.run([*base, "--json", str(gpf)], capture_output=True,
                                    text=True, timeout=60, check=True).stdout)
    assert doc["count"] == 1 and [f["source"] for f in doc["files"]] == [str(gpf), str(quiet)]
    assert doc["files"][0] == {k: v for k, v in one.items() if k != "schema"}
    bad = subprocess.run([*base, "--report", "1", str(gpf), str(quiet)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
