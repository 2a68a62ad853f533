"""Report details: address hints, taint, contexts and prefixes, truncation, code, demangling."""

from __future__ import annotations

import pytest

from kpeek.kernel.disasm import disassemble, disassemble_around
from kpeek.reports import parse_reports
from kpeek.reports.demangle import demangle
from kpeek.reports.details import interpret_address, parse_code_line
from kpeek.reports.symbolize import symbolize_log

NULL_DEREF = """\
BUG: kernel NULL pointer dereference, address: 0000000000000018
#PF: supervisor read access in kernel mode
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: 3 PID: 999 Comm: cat Tainted: G    B   W  O      6.5.0 #7
RIP: 0010:seq_read_iter+0x5c/0x4a0
Code: 00 00 48 89 fb 48 8b 47 08 48 89 45 c8 <48> 8b 40 18 48 85 c0 74 0a
Call Trace:
 <TASK>
 ? __die+0x23/0x70
 ? page_fault_oops+0x171/0x4e0
 seq_read+0xa3/0xd0
 vfs_read+0xb0/0x300
 ksys_read+0x67/0xf0
 do_syscall_64+0x5d/0x90
 </TASK>
"""


@pytest.mark.parametrize(("address", "hint"), [
    (0x18, "NULL pointer dereference"),
    (0xDEAD000000000100, "LIST_POISON1"),
    (0xDEAD000000000108, "LIST_POISON1 + 0x8"),
    (0xDEAD000000000122, "LIST_POISON2"),
    (0x6B6B6B6B6B6B6B6B, "POISON_FREE"),
    (0x6B6B6B6B6B6B6B73, "POISON_FREE"),
    (0xDFFFFC0000000003, "KASAN shadow of 0x18"),
    (0x4142434445464748, "non-canonical"),
    (0x00007FFD12345678, "user-space address"),
    (0xFFFFFFFFC0123456, "module space"),
    (0xFFFFC90000B2C000, "vmalloc space"),
])
def test_address_hints(address, hint):
    notes = " | ".join(interpret_address(address))
    assert hint in notes


def test_plain_kernel_address_gets_no_scary_hint():
    notes = " | ".join(interpret_address(0xFFFF888012345678))
    assert "direct map" in notes
    assert "poison" not in notes.lower() and "NULL" not in notes


def test_null_deref_without_timestamps():
    (r,) = parse_reports(NULL_DEREF)
    assert r.title == "BUG: unable to handle kernel NULL pointer dereference in seq_read_iter"
    assert r.kind == "null-deref"
    assert r.context == ""
    d = r.details
    assert d.fault_address == 0x18
    assert any("NULL" in n for n in d.address_notes)
    assert [c for c, _ in d.taint_flags] == ["B", "W", "O"]
    assert "memory was corrupted before" in dict(d.taint_flags)["B"]
    assert d.kernel_release == "6.5.0"
    names = [(f.function, f.reliable) for f in d.call_trace]
    assert ("__die", False) in names and ("seq_read", True) in names
    listing = disassemble_around(d.code.data, d.code.fault_offset, d.code.arch)
    assert listing.instructions[listing.fault_index].text == "mov rax, qword ptr [rax + 0x18]"


@pytest.mark.parametrize("prefix", [
    "[  512.123456] ",
    "[  512.123456][ T4242] ",
    "<4>[  512.123456] ",
    "[Mon Nov 23 16:00:00 2026] ",
    "Nov 23 16:00:00 myhost kernel: ",
    "2026-11-23T16:00:00+0000 myhost kernel: [  512.123456] ",
    "Nov 23 16:00:00.123456 myhost kernel: ",
    "[  512.123456] myhost kernel: ",
    "kern  :warn  : [  512.123456] ",
])
def test_same_title_whatever_the_log_prefix(prefix):
    text = "".join(prefix + line + "\n" for line in NULL_DEREF.splitlines())
    (r,) = parse_reports(text)
    assert r.title == "BUG: unable to handle kernel NULL pointer dereference in seq_read_iter"
    assert not r.corrupted


def test_interleaved_tasks_are_kept_apart():
    report = [f"[  9.{i:06d}][ T100] {line}" for i, line in enumerate(NULL_DEREF.splitlines())]
    noise = [f"[  9.{i:06d}][ T200]  evil_frame+0x1/0x2" for i in range(len(report))]
    mixed = [x for pair in zip(report, noise, strict=True) for x in pair]
    (r,) = parse_reports("\n".join(mixed) + "\n")
    assert r.context == "[T100]"
    assert r.guilty_frame == "seq_read_iter"
    assert all("evil_frame" not in line for line in r.lines)
    assert "evil_frame" not in [f.function for f in r.details.call_trace]


def test_truncated_report_is_flagged_not_invented():
    # Cut right after the header: there is no frame to blame.
    (r,) = parse_reports("[  1.000000] BUG: unable to handle kernel \n[  1.000001] usb 1-1: x\n")
    assert r.corrupted
    assert r.guilty_frame is None
    # Cut before the call trace: the RIP frame names it, but it is marked corrupted.
    cut = "\n".join(NULL_DEREF.splitlines()[:6]) + "\n"
    (r,) = parse_reports(cut)
    assert r.title.endswith("in seq_read_iter")
    assert r.corrupted and "stack" in r.corrupted_reason


def test_several_reports_in_one_log():
    warning = ("WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo_fn+0x10/0x20\nCall Trace:\n"
               " bar_fn+0x1/0x2\n baz_fn+0x3/0x4\n")
    text = NULL_DEREF + "random noise\n" + warning
    titles = [r.title for r in parse_reports(text)]
    assert titles == [
        "BUG: unable to handle kernel NULL pointer dereference in seq_read_iter",
        "WARNING in bar_fn",
    ]


def test_code_line_arm64():
    code = parse_code_line("Code: 910003fd f9000bf3 aa0003f3 97932e41 (08dffe60)")
    assert code is not None and code.arch == "arm64" and code.fault_offset == 16
    listing = disassemble_around(code.data, code.fault_offset, code.arch)
    assert listing.instructions[listing.fault_index].mnemonic == "ldarb"
    assert listing.instructions[0].text == "mov x29, sp"


def test_code_line_rejects_garbage():
    assert parse_code_line("Code: Bad RIP value.") is None
    assert parse_code_line("Code: 48 89 e5 5d c3") is None  # no faulting byte marked
    assert parse_code_line("Code: <48> <89>") is None


def test_disassemble_keeps_undecodable_bytes():
    insns = disassemble(b"\x90\x06\x90", 0x1000)  # 0x06 is invalid in 64-bit mode
    assert [i.valid for i in insns] == [True, False, True]
    assert [i.address for i in insns] == [0x1000, 0x1001, 0x1002]
    with pytest.raises(ValueError):
        disassemble(b"\x90", 0, arch="pdp11")


def test_rust_demangling():
    assert demangle("_RNvMs3_NtCshgDM7dBCdno_11rust_binder7processNtB5_7Process10update_ref") \
        == "<rust_binder::process::Process>::update_ref"
    assert demangle("_RNvCscSpY9Juk0HT_7___rustc17rust_begin_unwind") \
        == "__rustc::rust_begin_unwind"
    assert demangle("__cfi__RNvNtCs9jEwPDbx20M_4core9panicking9panic_fmt") \
        == "__cfi_core::panicking::panic_fmt"
    assert demangle("pipe_read") == "pipe_read"
    assert demangle("_RBBBBBBBB") == "_RBBBBBBBB"  # malformed: left alone


def test_symbolize_bare_addresses():
    names = {0xFFFFFFFF81234567: "pipe_read+0x17/0x200"}
    text = ("[  1.0]  [<ffffffff81234567>]\n[  1.1]  [<ffffffff80000000>]\n"
            "RIP: 0010:ffffffff81234567\n")
    out = symbolize_log(text, names.get).splitlines()
    assert out[0] == "[  1.0]  [<ffffffff81234567>] pipe_read+0x17/0x200"
    assert out[1] == "[  1.1]  [<ffffffff80000000>]"
    assert out[2] == "RIP: 0010:pipe_read+0x17/0x200"


def test_list_corruption_message_before_the_report():
    text = (
        "[ 5.0] list_del corruption, ffff888012345678->next is LIST_POISON1 (dead000000000100)\n"
        "[ 5.1] ------------[ cut here ]------------\n"
        "[ 5.2] kernel BUG at lib/list_debug.c:56!\n"
        "[ 5.3] invalid opcode: 0000 [#1] PREEMPT SMP\n"
        "[ 5.4] CPU: 2 PID: 33 Comm: kworker/2:1 Tainted: G        W 6.1.0 #1\n"
        "[ 5.5] RIP: 0010:__list_del_entry_valid.cold+0x1d/0x47\n"
        "[ 5.6] Call Trace:\n"
        "[ 5.7]  <TASK>\n"
        "[ 5.8]  my_driver_remove+0x4a/0x90 [mydrv]\n"
        "[ 5.9]  platform_remove+0x28/0x60\n"
    )
    (r,) = parse_reports(text)
    assert r.title == "BUG: corrupted list in my_driver_remove"
    assert r.kind == "bad-access"
    assert r.details.fault_address == 0xDEAD000000000100
    assert any("list_del()" in n for n in r.details.address_notes)
    assert r.details.messages[0].startswith("list_del corruption")
    assert r.details.call_trace[0].module == "mydrv"


def test_inconsistent_lock_state_skips_lockdep_internals():
    lines = [
        "================================",
        "WARNING: inconsistent lock state",
        "syzkaller #0 Not tainted",
        "--------------------------------",
        "inconsistent {SOFTIRQ-ON-W} -> {IN-SOFTIRQ-W} usage.",
        "swapper/1/0 [HC0[0]:SC1[1]:HE1:SE0] takes:",
        "ffff888026ad6260 (sk_lock-AF_X25){+.?.}-{0:0}, at: x25_kill_by_neigh+0x10d/0x250",
        "{SOFTIRQ-ON-W} state was registered at:",
        "  lock_acquire+0x115/0x350",
        "  x25_bind+0x209/0x450",
        "stack backtrace:",
        "CPU: 1 UID: 0 PID: 0 Comm: swapper/1 Not tainted syzkaller #0 PREEMPT(full)",
        "Call Trace:",
        " <IRQ>",
        " dump_stack_lvl+0xe8/0x150",
        " print_usage_bug+0x28c/0x2e0",
        " valid_state+0xbe/0xf0",
        " mark_lock_irq+0x36/0x380",
        " mark_lock+0x117/0x190",
        " __lock_acquire+0x6b7/0x2e50",
        " ? kasan_quarantine_put+0xbb/0x1f0",
        " lock_acquire+0x115/0x350",
        " lock_sock_nested+0x41/0x100",
        " x25_kill_by_neigh+0x10d/0x250",
        " x25_lapb_receive_frame+0x1b0/0xfb0",
    ]
    text = "".join(f"[  161.{i:06d}][    C1] {line}\n" for i, line in enumerate(lines))
    (r,) = parse_reports(text)
    assert r.title == "inconsistent lock state in x25_kill_by_neigh"
    assert r.kind == "lockdep" and r.detector == "lockdep"
    assert r.context == "[C1]"


def test_workqueue_lockup_names_the_busy_work():
    lines = [
        "BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 56s!",
        "Showing busy workqueues and worker pools:",
        "workqueue events: flags=0x100",
        "    in-flight: 9:nsim_fib_event_work for 58s nsim_fib_event_work",
        "Showing backtraces of busy workers in stalled worker pools:",
        "pool 2:",
        "task:kworker/0:0     state:R  running task     stack:0     pid:9",
        "Workqueue: events nsim_fib_event_work",
        "Call trace:",
        " __switch_to+0x2b0/0x6e0 (T)",
        " nsim_fib_event_work+0x1d8/0x320",
    ]
    text = "".join(f"[  120.{i:06d}][    C0] {line}\n" for i, line in enumerate(lines))
    (r,) = parse_reports(text)
    assert r.title == "BUG: workqueue lockup in nsim_fib_event_work"
    assert r.kind == "hang"
    # Older kernels print no backtraces: the title has no function then.
    (r,) = parse_reports("".join(f"[  120.{i:06d}][    C0] {line}\n"
                                 for i, line in enumerate(lines[:4])))
    assert r.title == "BUG: workqueue lockup"


def test_hung_task_whose_name_holds_a_newline():
    lines = [
        "INFO: task \ufffd\ufffd",
        "\ufffd!:18088 blocked for more than 143 seconds.",
        '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
        "Call Trace:",
        " <TASK>",
        " __schedule+0x10e9/0x6820",
        " schedule+0xdd/0x390",
        " schedule_timeout+0x1b2/0x280",
        " __wait_for_common+0x2e7/0x4c0",
        " __flush_work+0x7c7/0xcb0",
        " p9_fd_close+0x299/0x5a0",
        " p9_client_create+0x678/0xd40",
    ]
    text = "".join(f"[ 1052.{i:06d}][   T41] {line}\n" for i, line in enumerate(lines))
    (r,) = parse_reports(text)
    assert r.title == "INFO: task hung in p9_fd_close"
    assert r.kind == "hang"


def test_new_warning_format_blames_the_caller_of_iomap_helpers():
    lines = [
        "------------[ cut here ]------------",
        "ifs_is_fully_uptodate(folio, ifs) != folio_test_uptodate(folio)",
        "WARNING: fs/iomap/buffered-io.c:289 at ifs_free+0x344/0x400, CPU#0: kswapd0/69",
        "Modules linked in:",
        "CPU: 0 UID: 0 PID: 69 Comm: kswapd0 Tainted: G             L      syzkaller #0",
        "Tainted: [L]=SOFTLOCKUP",
        "RIP: 0010:ifs_free+0x344/0x400",
        "Call Trace:",
        " <TASK>",
        " iomap_release_folio+0x254/0x450",
        " shrink_folio_list+0x2364/0x5330",
        " ? __pfx_shrink_folio_list+0x10/0x10",
        " evict_folios+0x3821/0x49e0",
    ]
    text = "".join(f"[  156.{i:06d}][   T69] {line}\n" for i, line in enumerate(lines))
    (r,) = parse_reports(text)
    assert r.title == "WARNING in iomap_release_folio"
    assert r.details.taint_flags == [("L", "soft lockup happened earlier")]


def test_boot_advisories_are_not_reports():
    text = ("[  217.823293][T11879] WARNING: Unprivileged eBPF is enabled, data leaks possible"
            " via Spectre v2 BHB attacks!\n"
            "[  218.000000][T11879] WARNING: The mand mount option has been deprecated and\n")
    assert parse_reports(text) == []


def test_disassemble_names_branch_targets():
    names = {0x1005: "next_fn+0x0/0x10"}
    (call,) = disassemble(b"\xe8\x00\x00\x00\x00", 0x1000, names.get)
    assert call.mnemonic == "call" and call.symbol == "next_fn+0x0/0x10"
    (ret,) = disassemble(bytes.fromhex("c0035fd6"), 0x2000, arch="arm64")
    assert ret.text == "ret"
