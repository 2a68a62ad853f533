"""The table of Linux kernel report kinds: start markers, title formats, skips.

Titles follow the conventions kernel developers know from syzbot
(syzkaller's pkg/report): ``KASAN: use-after-free Read in f``,
``general protection fault in f``, ``INFO: task hung in f`` ... so that the
same crash gets the same title wherever it is seen. The table is data; the
engine that applies it is :mod:`kpeek.reports.parse`.

Format strings use ``{0}``, ``{1}`` ...: first the groups captured by the
title (or report) patterns, then the guilty frame(s) found by the stack spec.
"""

from __future__ import annotations

import re

from kpeek.reports.patterns import (
    PARSE_STACK,
    Format,
    ReportKind,
    StackSpec,
    Step,
    lazy,
    rx,
)

# An instruction-pointer line: x86 "RIP: 0010:func+0x1/0x2", arm64 "pc : func+0x..",
# old arm "PC is at func+0x..", powerpc "NIP [..] func+..". Only the first
# alternative captures a function; the others just mark "no symbol".
RIP_FRAME = rx(
    r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{{PC}} +){0,2}{{FUNC}}"
    r"|(?:[0-9]+:)?0x[0-9a-f]+|(?:[0-9]+:)?{{PC}} +\[< *\(null\)>\] +\(null\)"
    r"|[0-9]+: +\(null\))"
)
CALL_TRACE = rx(r"(?:Call (?:T|t)race:)|(?:Backtrace:)")

# Lines that start a stack trace (and end the previous one).
STACK_STARTS: tuple[re.Pattern[str], ...] = (
    lazy(r"Call (?:T|t)race"),
    lazy(r"Allocated:"),
    lazy(r"Allocated by task [0-9]+:"),
    lazy(r"Freed:"),
    lazy(r"Freed by task [0-9]+:"),
    # "backtrace:" of kmemleak, but not lockdep's "stack backtrace:".
    lazy(r"[^k] backtrace(?: \(crc [0-9a-fA-F]*\))?:"),
    lazy(r"Backtrace:"),
    lazy(r"Uninit was stored to memory at"),
)
STACK_START_ANY = lazy("|".join(f"(?:{p.pattern})" for p in STACK_STARTS))
# RISC-V prints registers and then the stack without a "Call Trace" line.
RISCV_STACK_START = lazy(
    r"status: [0-9a-f]{16} badaddr: [0-9a-f]{16} cause: [0-9a-f]{16}"
)

# One stack frame per line: x86/arm64 " func+0x1/0x2", with optional [<pc>]s,
# and 32-bit arm's "[<pc>] (callee) from [<pc>] (caller+0x..)".
FRAME_LINES: tuple[re.Pattern[str], ...] = (
    rx(r"^ *(?:{{PC}} ){0,2}{{FUNC}}"),
    rx(r"^ *{{PC}} \(([a-zA-Z0-9_.]+)\) from {{PC}} \({{FUNC}}"),
)

# Fault-injection stacks interleave with reports and make them unreliable.
CORRUPTED_LINES: tuple[re.Pattern[str], ...] = (
    lazy(r"^( \[<?(?:0x)?[0-9a-f]+>?\])? should_fail(slab)?(\.[a-z0-9.]+)?\+0x"),
)

# Functions that are never the one to blame: the reporting machinery,
# sanitizers, locking, allocators, string and list helpers, generic driver
# core plumbing. Matched as regex searches on the function name.
COMMON_SKIP: tuple[str, ...] = (
    "__sanitizer", "__asan", "kasan", "hwasan", "__msan", "kmsan",
    "kcsan_setup_watchpoint", "check_memory_region", "check_heap_object",
    "check_object", "read_word_at_a_time", "(read|write)_once_.*nocheck",
    "print_address_description", "panic", "invalid_op", "report_bug",
    "fixup_bug", "print_report", "print_usage_bug", "do_error", r"_trap$|do_trap",
    "show_stack", "dump_stack", "walk_stack", "dump_backtrace", "warn_slowpath",
    "warn_alloc", "warn_bogus", "__warn", "alloc_page", "k?v?(?:m|z|c)alloc",
    "krealloc", "kmem_cache", "allocate_slab", "__alloc_frozen_pages_noprof",
    "folio_(?:alloc|unlock)", "filemap_alloc_folio", "__filemap_get_folio",
    "find_or_create_page", "do_read_cache_folio", "read_cache_page",
    "pagecache_get_page", "grab_cache_page_write_begin", "slab_",
    "debug_object", "timer_is_static_object", "work_is_static_object",
    "__might_fault", "print_unlock", "imbalance_bug", "lockdep", "bh_enable",
    "bh_disable", "perf_trace", "lock_acquire", "lock_release", "lock_class",
    "mark_lock", "(reacquire|mark)_held_locks", "raw_spin_rq", "spin_lock",
    "spin_trylock", "spin_unlock", "read_lock", "read_trylock", "write_lock",
    "write_trylock", "read_unlock", "write_unlock", "^down$", "down_read",
    "down_write", "down_read_trylock", "down_write_trylock", "down_trylock",
    "up_read", "up_write", "^mutex_", "^__mutex_", "^rt_mutex_", "owner_on_cpu",
    "osq_lock", "osq_unlock",
    "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)",
    "(set|clear|change|test)_bit", "__wake_up", "^refcount_", "^kref_",
    "ref_tracker", "seqprop_assert", "memcpy", "memcmp", "memset", "memchr",
    "memmove", "memdup", "strcmp", "strncmp", "strcpy", "strlcpy", "strncpy",
    "strscpy", "strlen", "strstr", "strnstr", "strnlen", "strchr", "strdup",
    "strndup", "copy_to_user", "copy_from_user", "copy_to_iter",
    "copy_from_iter", "copy_page_to_iter", "copy_page_from_iter",
    "copy_folio_to_iter", "^copyin$", "^copyout$", "put_user", "get_user",
    "might_fault", "might_sleep", "list_add", "list_del", "list_replace",
    "list_move", "list_splice", "^rb_", "^__rb_", "_indirect_thunk_", "string",
    "pointer", "snprintf", "scnprintf", "kasprintf", "kvasprintf", "printk",
    "va_format", "dev_info", "dev_notice", "dev_warn", "dev_err", "dev_alert",
    "dev_crit", "dev_emerg", "program_check_exception", "program_check_common",
    "del_timer", "flush_work", "__cancel_work_timer", "cancel_work_sync",
    "try_to_grab_pending", "flush_workqueue", "drain_workqueue",
    "destroy_workqueue", "queue_work", "finish_wait", "kthread_stop",
    "kobject_", "add_uevent_var", "get_device_parent", "device_add",
    "device_del", "device_unregister", "device_destroy", "device_release",
    "devres_release_all", "hwrng_unregister", "i2c_del_adapter",
    "__unregister_client", "device_for_each_child", "rollback_registered",
    "unregister_netdev", "sysfs_remove", "device_remove_file",
    "tty_unregister_device", "dummy_urb_enqueue", "usb_kill_urb",
    "usb_kill_anchored_urbs", "usb_control_msg", "usb_hcd_submit_urb",
    "usb_submit_urb", "^complete$", "wait_for_completion", "^kv?free$",
    "kfree_skb", "readb$", "readw$", "readl$", "readq$", "writeb$", "writew$",
    "writel$", "writeq$", "logic_in", "logic_out", r"^crc\d+", "crc_itu_t",
    "__might_resched", "assertfail", "^iput$", "^iput_final$", "^ihold$",
    "hex_dump_to_buffer", "print_hex_dump", "^klist_",
    "(trace|lockdep)_(hard|soft)irq", "^(un)?lock_page",
    "stack_trace_consume_entry", "arch_stack_walk", "stack_trace_save",
    "insert_work", "__queue_delayed_work", "queue_delayed_work_on", "ida_free",
    # arm64 fault entry path
    "do_(kernel|translation)_fault", "do_mem_abort", "el1_abort",
    "el1h_64_sync(?:_handler)?", "print_tainted", "xas_(?:start|load|find)",
    "find_lock_entries", "truncate_inode_pages_range", "__phys_addr",
    "__fortify_report", "cleanup_srcu_struct", "rhashtable_lookup",
    "extract_(user|iter)_to_sg", "drop_nlink", "^get_taint$", "^put_device$",
    "lock_timer_base", "__timer_delete_sync", "sk_stop_timer_sync",
    "__mod_timer", "fast_dput", "dput",
    # Page-cache and buffer-head helpers that WARN about the state their
    # caller (a file system) handed them: the caller is to blame.
    "mark_buffer_dirty", "truncate_cleanup_folio", "^ifs_free$",
    # Socket lock primitives are locking, like spin_lock and mutex_lock.
    "^lock_sock(?:_nested|_fast)?$", "^release_sock$",
    # lockdep's own checking path (kernel/locking/lockdep.c).
    "^valid_state$", "^mark_usage$", "^check_prevs?_add$", "^validate_chain$",
    "^check_noncircular$", "^check_irq_usage$",
)

# Syscall entry wrappers differ per architecture and kernel version; titles
# use the bare name so the same bug gets one title everywhere.
STRIP_FRAME_PREFIXES: tuple[str, ...] = (
    "SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_",
    "___sys_", "__sys_", "__se_", "__se_sys_", "__do_sys_", "compat_SYSC_",
    "compat_SyS_", "ksys_",
)

# Frames where a stall's looping code is entered from a dispatcher: the
# frame just above one of these names the stalled work.
STALL_ANCHORS: tuple[re.Pattern[str], ...] = tuple(
    lazy(p)
    for p in (
        "process_one_work", "do_syscall_", "do_fast_syscall_", "sysenter_dispatch",
        "tracesys_phase2", "el0_svc_handler", "invoke_syscall", "ret_fast_syscall",
        "netif_receive_skb", "do_softirq", "call_timer_fn", "_run_timers",
        "run_timer_softirq", "hrtimer_run", "run_ksoftirqd", "smpboot_thread_fn",
        "^kthread$", "start_secondary", "cpu_startup_entry", "ret_from_fork",
        "vfs_write", "vfs_read", "vfs_iter_read", "vfs_iter_write", "do_iter_read",
        "do_iter_write", "call_read_iter", "call_write_iter", "new_sync_read",
        "new_sync_write", "vfs_ioctl", "ksys_ioctl", "compat_ioctl",
        "compat_sys_ioctl", "blkdev_driver_ioctl", "blkdev_ioctl",
        "do_iter_readv_writev", "^call_mmap", "mmap_region", "do_mmap",
        "do_dentry_open", "vfs_open", "^sock_sendmsg", "^sock_recvmsg",
        "^sock_release", "^__sock_release", "^setsockopt$", "kernel_setsockopt",
        "sock_common_setsockopt", "^listen$", "kernel_listen", "sk_common_release",
        "^sock_mmap", "^accept$", "kernel_accept", "^sock_do_ioctl", "^sock_ioctl",
        "^compat_sock_ioctl", "^nfnetlink_rcv_msg", "^rtnetlink_rcv_msg",
        "^netlink_dump", "^(sys_)?(socketpair|connect|ioctl)", "__do_fault",
        "do_page_fault", "^page_fault$", "__fput", "task_work_run",
        "exit_to_usermode", "smp_call_function", "tasklet_action",
        "tasklet_hi_action",
    )
)


def choose_stall_frame(frames: list[str]) -> tuple[str, int]:
    """For stalls and lockups: the frame just above the first dispatcher frame.

    A stalled CPU is caught at a random point of a loop; the frame that
    entered the loop (the syscall, the work function) identifies the bug.
    """
    prev, prev_idx = frames[0], 0
    for i, frame in enumerate(frames):
        if any(a.search(frame) for a in STALL_ANCHORS):
            if "smp_call_function" in frame:
                return "smp_call_function", i
            return prev, prev_idx
        prev, prev_idx = frame, i
    return "", -1


_HANG_ANCHORS = {
    "rtnl_lock": "",
    "synchronize_rcu": "synchronize_rcu",
    "synchronize_srcu": "synchronize_rcu",
    "synchronize_net": "synchronize_rcu",
    "synchronize_sched": "synchronize_rcu",
}
_HANG_SKIP = (
    "sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread",
    "wait", "synchronize", "context_switch", "__switch_to", "cancel_delayed_work",
    "rcu_barrier",
)


def choose_hang_frame(frames: list[str]) -> tuple[str, int]:
    """For hung tasks: group waits on rtnl_lock / synchronize_rcu, else skip waiting frames."""
    for i, frame in enumerate(frames):
        for anchor, replacement in _HANG_ANCHORS.items():
            if anchor in frame:
                return (replacement or frame), i
    for i, frame in enumerate(frames):
        if not any(s in frame for s in _HANG_SKIP):
            return frame, i
    return "", -1


def _warning_stack(*skip: str) -> StackSpec:
    # Newer kernels trap on WARN and print RIP first; older ones only a Call Trace.
    return StackSpec(
        parts=(rx(r"(?:" + RIP_FRAME.pattern + r"|--- interrupt: [0-9]+ at {{FUNC}})"),
               PARSE_STACK),
        parts2=(CALL_TRACE, PARSE_STACK),
        skip=skip,
    )


def _trace(*skip: str, chooser=None) -> StackSpec:
    return StackSpec(parts=(CALL_TRACE, PARSE_STACK), skip=skip, chooser=chooser)


def _rip_trace(*skip: str, chooser=None) -> StackSpec:
    return StackSpec(parts=(RIP_FRAME, CALL_TRACE, PARSE_STACK), skip=skip, chooser=chooser)


def _later(pattern: str) -> Step:
    return Step(rx(pattern))


_BUG = ReportKind(
    "BUG:",
    (
        Format(
            rx(r"BUG: KASAN:"),
            "KASAN: {0} {2} in {3}",
            report=(Step(rx(r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}")),
                    _later(r"(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)")),
            alt=("bad-access in {3}",),
            stack=StackSpec(
                parts=(rx(r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}"), CALL_TRACE, PARSE_STACK),
                skip=("kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_"),
            ),
        ),
        Format(
            rx(r"BUG: KASAN:"),
            "KASAN: invalid-free in {1}",
            report=(Step(rx(r"BUG: KASAN: (?:double-free or invalid-free|double-free"
                            r"|invalid-free) in {{FUNC}}")),),
            alt=("invalid-free in {1}",),
            stack=StackSpec(
                parts=(rx(r"BUG: KASAN: (?:double-free or invalid-free|double-free"
                          r"|invalid-free) in {{FUNC}}"), CALL_TRACE, PARSE_STACK),
                skip=("slab_", "kfree", "vunmap", "vfree"),
            ),
        ),
        Format(
            rx(r"BUG: KASAN: ([a-z\-]+) on address"),
            "KASAN: {0} {1}",
            report=(Step(rx(r"BUG: KASAN: ([a-z\-]+) on address")),
                    _later(r"(Read|Write) of size ([0-9]+)")),
        ),
        Format(rx(r"BUG: KASAN: (.*)"), "KASAN: {0}", corrupted=True),
        Format(
            rx(r"BUG: KMSAN: kernel-usb-infoleak"),
            "KMSAN: kernel-usb-infoleak in {1}",
            report=(Step(rx(r"BUG: KMSAN: kernel-usb-infoleak in {{FUNC}}")),),
            alt=("KMSAN origin in {2}",),
            stack=StackSpec(
                parts=(PARSE_STACK, rx(r"(Local variable .* created at:|Uninit was created at:)"),
                       PARSE_STACK),
                skip=("alloc_skb", "usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg",
                      "usb_interrupt_msg", "usb_control_msg"),
            ),
            no_stack_trace=True,
        ),
        Format(
            rx(r"BUG: KMSAN:"),
            "KMSAN: {0} in {2}",
            report=(Step(rx(r"BUG: KMSAN: ([a-z\-]+) in {{FUNC}}")),),
            alt=("bad-access in {2}",),
            stack=StackSpec(
                parts=(PARSE_STACK, rx(r"(Local variable .* created at:|Uninit was created at:)"),
                       PARSE_STACK),
                skip=("alloc_skb", "netlink_ack", "netlink_rcv_skb", "_encrypt$",
                      "^(?:crypto|cipher|drbg|rng)_"),
            ),
            no_stack_trace=True,
        ),
        Format(rx(r"BUG: KCSAN: data-race"), "KCSAN: {0}",
               report=(Step(rx(r"BUG: KCSAN: (.*)")),), no_stack_trace=True),
        Format(rx(r"BUG: KCSAN:"), "KCSAN: {0}",
               report=(Step(rx(r"BUG: KCSAN: (.*)")),), no_stack_trace=True),
        Format(
            rx(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in {{FUNC}}"),
            "KFENCE: {0} {1} in {3}",
            alt=("bad-access in {3}",),
            stack=StackSpec(parts=(rx(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), PARSE_STACK)),
        ),
        Format(
            rx(r"BUG: KFENCE: invalid free in {{FUNC}}"),
            "KFENCE: invalid free in {1}",
            alt=("invalid-free in {1}",),
            stack=StackSpec(parts=(rx(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), PARSE_STACK)),
            no_stack_trace=True,
        ),
        Format(
            rx(r"BUG: KFENCE: invalid (read|write) in {{FUNC}}"),
            "KFENCE: invalid {0} in {2}",
            alt=("bad-access in {2}",),
            stack=StackSpec(parts=(rx(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), PARSE_STACK)),
        ),
        Format(
            rx(r"BUG: KFENCE: memory corruption in {{FUNC}}"),
            "KFENCE: memory corruption in {1}",
            stack=StackSpec(parts=(rx(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), PARSE_STACK)),
            no_stack_trace=True,
        ),
        Format(
            rx(r"BUG: (?:unable to handle kernel paging request|unable to handle page fault"
               r" for address|Unable to handle kernel data access)"),
            "BUG: unable to handle kernel paging request in {0}",
            alt=("bad-access in {0}",),
            stack=_rip_trace(),
        ),
        Format(
            rx(r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer"
               r" dereference|Kernel NULL pointer dereference)"),
            "BUG: unable to handle kernel NULL pointer dereference in {0}",
            alt=("bad-access in {0}",),
            stack=_rip_trace(),
        ),
        # The second half of this header is a separate printk and can be lost.
        Format(rx(r"BUG: (?:unable to handle kernel|Unable to handle kernel)"),
               "BUG: unable to handle kernel", corrupted=True),
        Format(
            rx(r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion"
               r"|cpu recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP)"),
            "BUG: {0} {1} in {2}",
            stack=_trace("spin_", "_lock", "_unlock"),
        ),
        Format(
            rx(r"BUG: soft lockup"),
            "BUG: soft lockup in {0}",
            alt=("stall in {0}",),
            stack=_rip_trace(chooser=choose_stall_frame),
        ),
        Format(
            rx(r"BUG: .*still has locks held!"),
            "BUG: still has locks held in {0}",
            report=(Step(rx(r"BUG: .*still has locks held!")), _later(r"{{PC}} +{{FUNC}}")),
        ),
        Format(rx(r"BUG: scheduling while atomic"), "BUG: scheduling while atomic in {0}",
               stack=_trace("schedule")),
        Format(
            rx(r"BUG: lock held when returning to user space"),
            "BUG: lock held when returning to user space in {0}",
            report=(Step(rx(r"BUG: lock held when returning to user space")),
                    _later(r"leaving the kernel with locks still held"),
                    _later(r"at: (?:{{PC}} +)?{{FUNC}}")),
            no_stack_trace=True,
        ),
        Format(
            rx(r"BUG: bad unlock balance detected!"),
            "BUG: bad unlock balance in {0}",
            stack=StackSpec(parts=(rx(r"{{PC}} +{{FUNC}}"), CALL_TRACE, PARSE_STACK)),
        ),
        Format(
            rx(r"BUG: held lock freed!"),
            "BUG: held lock freed in {0}",
            report=(Step(rx(r"BUG: held lock freed!")), _later(r"{{PC}} +{{FUNC}}")),
        ),
        Format(rx(r"BUG: Bad rss-counter state"), "BUG: Bad rss-counter state",
               no_stack_trace=True),
        Format(rx(r"BUG: non-zero nr_ptes on freeing mm"), "BUG: non-zero nr_ptes on freeing mm",
               no_stack_trace=True),
        Format(rx(r"BUG: non-zero nr_pmds on freeing mm"), "BUG: non-zero nr_pmds on freeing mm",
               no_stack_trace=True),
        # File system type and block device are left out: they split one bug in many.
        Format(
            rx(r"BUG: Dentry .* still in use"),
            "BUG: Dentry still in use in {0}",
            report=(Step(rx(r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of ([^\]]+)\]")),),
            alt=("BUG: Dentry still in use [{0} of {1}]",),
        ),
        Format(
            rx(r"BUG: Bad page (state|cache)"),
            "BUG: Bad page {0} in {1}",
            stack=StackSpec(
                parts=(lazy(r"page last allocated"), PARSE_STACK),
                skip=("(free|put|get|update|release)_page", "free_unref", "^_*folio",
                      "truncate_inode_pages", "page_frag_free", "alloc", "vmap", "page_owner"),
            ),
        ),
        Format(rx(r"BUG: Bad page map"), "BUG: Bad page map"),
        # Newer kernels show the busy workers of the stalled pool: the first
        # one's work function names the lockup.
        Format(rx(r"BUG: workqueue lockup"), "BUG: workqueue lockup in {0}",
               report=(Step(rx(r"BUG: workqueue lockup")),
                       _later(r"Showing backtraces of busy workers in stalled worker pools"),
                       _later(r"^Workqueue: \S+ ([a-zA-Z0-9_]+)")),
               no_stack_trace=True),
        Format(rx(r"BUG: workqueue lockup"), "BUG: workqueue lockup", no_stack_trace=True),
        Format(rx(r"BUG: sleeping function called from invalid context at (.*)"),
               "BUG: sleeping function called from invalid context in {1}", stack=_trace()),
        Format(
            rx(r"BUG: using ([a-z_]+)\(\) in preemptible"),
            "BUG: using {0}() in preemptible code in {1}",
            stack=_trace("dump_stack", "preemption", "preempt", "debug_", "processor_id",
                         "this_cpu"),
        ),
        Format(
            rx(r"BUG: workqueue leaked lock or atomic"),
            "BUG: workqueue leaked lock or atomic in {0}",
            report=(Step(rx(r"BUG: workqueue leaked lock or atomic")),
                    _later(r"last function: ([a-zA-Z0-9_]+)$")),
            no_stack_trace=True,
        ),
        Format(
            rx(r"BUG: memory leak"),
            "memory leak in {0}",
            stack=StackSpec(
                parts=(rx(r"backtrace(?: \(crc [0-9a-fA-F]*\))?:"), PARSE_STACK),
                skip=("kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get",
                      "list_lru_init", "kasprintf", "kvasprintf", "pcpu_create", "strdup",
                      "strndup", "memdup"),
            ),
        ),
        Format(
            rx(r"BUG: .*stack guard page was hit at"),
            "BUG: stack guard page was hit in {0}",
            alt=("stack-overflow in {0}",),
            stack=_rip_trace(chooser=choose_stall_frame),
        ),
        # arm64 spelling of a lockdep wait-context violation; titled like x86's.
        Format(rx(r"BUG: Invalid wait context"), "WARNING: locking bug in {0}",
               stack=_trace("lock_sock", "release_sock")),
        Format(rx(r"BUG:\s*$"), "BUG: corrupted", corrupted=True),
    ),
    suppressions=(
        lazy(r"ODEBUG:"),
        lazy(r"Boot_DEBUG:"),
        lazy(r"xlog_status:"),
        lazy(r"DEBUG:"),
        lazy(r"BUG: no syscalls can create resource"),
    ),
)

_WARNING = ReportKind(
    "WARNING:",
    (
        Format(rx(r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)"),
               "WARNING: ODEBUG bug in {0}",
               stack=_warning_stack("debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_",
                                    "vunmap", "vfree", "__free_", "debug_check", "kobject_")),
        Format(rx(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)"),
               "WARNING: bad usercopy in {0}", stack=_warning_stack("usercopy", "__check")),
        Format(rx(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)"),
               "WARNING: kobject bug in {0}", stack=_warning_stack("kobject_")),
        Format(rx(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)"),
               "WARNING: proc registration bug in {0}", stack=_warning_stack("proc_")),
        Format(rx(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)"),
               "WARNING: refcount bug in {0}", stack=_warning_stack("refcount", "kobject_")),
        Format(rx(r"WARNING: .*kernel/locking/lockdep\.c.*lock_"),
               "WARNING: locking bug in {0}", stack=_warning_stack("lock_sock", "release_sock")),
        Format(rx(r"WARNING: .*still has locks held!"), "WARNING: still has locks held in {0}",
               report=(Step(rx(r"WARNING: .*still has locks held!")), _later(r"at: {{FUNC}}"))),
        Format(rx(r"WARNING: Nested lock was not taken"),
               "WARNING: nested lock was not taken in {0}", stack=_warning_stack()),
        Format(rx(r"WARNING: lock held when returning to user space"),
               "WARNING: lock held when returning to user space in {0}",
               report=(Step(rx(r"WARNING: lock held when returning to user space")),
                       _later(r"leaving the kernel with locks still held"),
                       _later(r"at: (?:{{PC}} +)?{{FUNC}}")),
               no_stack_trace=True),
        Format(rx(r"WARNING: .*mm/.*\.c.* k?.?malloc"), "WARNING: kmalloc bug in {0}",
               stack=_warning_stack("kmalloc", "krealloc", "slab", "kmem")),
        Format(rx(r"WARNING: .*mm/vmalloc.c.*__vmalloc_node"), "WARNING: zero-size vmalloc in {0}",
               stack=_warning_stack()),
        Format(rx(r"WARNING: .* usb_submit_urb"), "WARNING in {0}/usb_submit_urb",
               stack=_warning_stack("usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg",
                                    "usb_interrupt_msg", "usb_control_msg")),
        Format(rx(r"WARNING: {{SRC}} at 0x\d+, CPU#\d+"), "WARNING in {1}",
               stack=_warning_stack()),

        Format(rx(r"WARNING: .* at {{SRC}} {{FUNC}}"), "WARNING in {2}", stack=_warning_stack()),
        Format(rx(r"WARNING: {{SRC}} at {{FUNC}}"), "WARNING in {2}", stack=_warning_stack()),
        Format(rx(r"WARNING: \[.*\] {{SRC}} at {{FUNC}}.*"), "WARNING in {2}",
               stack=_warning_stack()),
        Format(
            rx(r"WARNING: possible circular locking dependency detected"),
            "possible deadlock in {0}",
            report=(Step(rx(r"WARNING: possible circular locking dependency detected")),
                    _later(r"is trying to acquire lock")),
            stack=StackSpec(
                parts=(rx(r"at: (?:{{PC}} +)?{{FUNC}}"), rx(r"at: (?:{{PC}} +)?{{FUNC}}"),
                       PARSE_STACK),
                # Work-item locks: the deadlock is in the work subsystem's users.
                skip=("process_one_work", "flush_workqueue", "drain_workqueue",
                      "destroy_workqueue"),
            ),
        ),
        Format(
            rx(r"WARNING: possible irq lock inversion dependency detected"),
            "possible deadlock in {0}",
            report=(Step(rx(r"WARNING: possible irq lock inversion dependency detected")),
                    _later(r"just changed the state of lock"),
                    _later(r"at: (?:{{PC}} +)?{{FUNC}}")),
        ),
        Format(
            rx(r"WARNING: .*-safe -> .*-unsafe lock order detected"),
            "possible deadlock in {0}",
            stack=StackSpec(parts=(rx(r"which became (?:.*) at:"), PARSE_STACK)),
        ),
        Format(
            rx(r"WARNING: possible recursive locking detected"),
            "possible deadlock in {0}",
            report=(Step(rx(r"WARNING: possible recursive locking detected")),
                    _later(r"is trying to acquire lock"),
                    _later(r"at: (?:{{PC}} +)?{{FUNC}}")),
        ),
        Format(
            rx(r"WARNING: inconsistent lock state"),
            "inconsistent lock state in {1}",
            report=(Step(rx(r"WARNING: inconsistent lock state")), _later(r"takes"),
                    _later(r"at: (?:{{PC}} +)?{{FUNC}}")),
            stack=_trace(),
        ),
        Format(
            rx(r"WARNING: suspicious RCU usage"),
            "WARNING: suspicious RCU usage in {1}",
            report=(Step(rx(r"WARNING: suspicious RCU usage")), _later(r"{{SRC}}")),
            stack=_trace("rcu", "kmem", "slab"),
        ),
        Format(rx(r"WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value"),
               "WARNING: kernel stack regs has bad '{0}' value", no_stack_trace=True),
        Format(rx(r"WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value"),
               "WARNING: kernel stack frame pointer has bad value", no_stack_trace=True),
        Format(rx(r"WARNING: bad unlock balance detected!"), "WARNING: bad unlock balance in {0}",
               stack=StackSpec(parts=(rx(r"{{PC}} +{{FUNC}}"), CALL_TRACE, PARSE_STACK))),
        Format(rx(r"WARNING: held lock freed!"), "WARNING: held lock freed in {0}",
               report=(Step(rx(r"WARNING: held lock freed!")),
                       _later(r"at:(?: {{PC}})? +{{FUNC}}"))),
        Format(rx(r"WARNING: kernel stack regs .* has bad 'bp' value"),
               "WARNING: kernel stack regs has bad value", no_stack_trace=True),
        Format(rx(r"WARNING: kernel stack frame pointer .* has bad value"),
               "WARNING: kernel stack regs has bad value", no_stack_trace=True),
        Format(rx(r"WARNING:\s*$"), "WARNING: corrupted", corrupted=True),
    ),
    suppressions=tuple(
        lazy(p)
        for p in (
            r"WARNING: /etc/ssh/moduli does not exist, using fixed modulus",
            r"WARNING: workqueue cpumask: online intersect > possible intersect",
            r"WARNING: [Tt]he mand mount option",
            r"WARNING: Unsupported flag value\(s\) of 0x%x in DT_FLAGS_1",
            # Advisories printed at boot or on a sysctl change, not bugs.
            r"WARNING: Unprivileged eBPF is enabled",
            r"WARNING: fbcon: Driver '(.*)' missed to adjust virtual screen size",
            r"WARNING: See https.* for mitigation options.",
            r"WARNING: kernel not compiled with CPU_SRSO",
            r"EXT4-[Ff][Ss](?: \(.*\))?:",
            r"(?i:warning: .* uses (deprecated v2 capabilities|wireless extensions))",
            r"XFS \(\w+\): WARNING",
        )
    ),
)

_INFO = ReportKind(
    "INFO:",
    (
        Format(rx(r"INFO: possible circular locking dependency detected"),
               "possible deadlock in {0}",
               report=(Step(rx(r"INFO: possible circular locking dependency detected \]")),
                       _later(r"is trying to acquire lock"), _later(r"at: {{PC}} +{{FUNC}}"))),
        Format(rx(r"INFO: possible irq lock inversion dependency detected"),
               "possible deadlock in {0}",
               report=(Step(rx(r"INFO: possible irq lock inversion dependency detected \]")),
                       _later(r"just changed the state of lock"),
                       _later(r"at: {{PC}} +{{FUNC}}"))),
        Format(rx(r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected"),
               "possible deadlock in {0}",
               report=(Step(rx(r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected \]")),
                       _later(r"is trying to acquire"), _later(r"at: {{PC}} +{{FUNC}}"))),
        Format(rx(r"INFO: possible recursive locking detected"), "possible deadlock in {0}",
               report=(Step(rx(r"INFO: possible recursive locking detected \]")),
                       _later(r"is trying to acquire lock"), _later(r"at: {{PC}} +{{FUNC}}"))),
        Format(rx(r"INFO: inconsistent lock state"), "inconsistent lock state in {0}",
               report=(Step(rx(r"INFO: inconsistent lock state \]")), _later(r"takes"),
                       _later(r"at: {{PC}} +{{FUNC}}"))),
        Format(
            rx(r"INFO: rcu_(?:preempt|sched|bh|tasks) (?:self-)?detected(?: expedited)? stall"),
            "INFO: rcu detected stall in {0}",
            alt=("stall in {0}",),
            stack=StackSpec(
                parts=(lazy(r"apic_timer_interrupt"), RIP_FRAME, PARSE_STACK),
                parts2=(lazy(r"(?:apic_timer_interrupt|Exception stack|el1h_64_irq)"),
                        PARSE_STACK),
                skip=("apic_timer_interrupt", "rcu"),
                chooser=choose_stall_frame,
            ),
        ),
        Format(rx(r"INFO: trying to register non-static key"),
               "INFO: trying to register non-static key in {0}",
               stack=_trace("stack", "lock", "IRQ")),
        Format(rx(r"INFO: suspicious RCU usage"), "INFO: suspicious RCU usage in {1}",
               report=(Step(rx(r"INFO: suspicious RCU usage")), _later(r"{{SRC}}")),
               stack=_trace("rcu", "kmem", "slab")),
        Format(rx(r"INFO: task .* blocked (?:in I/O wait )?for more than [0-9]+ seconds"),
               "INFO: task hung in {0}", alt=("hang in {0}",),
               stack=_trace(chooser=choose_hang_frame)),
        Format(rx(r"INFO: task .* can't die for more than .* seconds"),
               "INFO: task can't die in {0}", alt=("hang in {0}",),
               stack=_trace("schedule")),
        # A task name may hold a newline (comm is set by user space): the
        # "blocked for more than" part then comes on a later line.
        Format(rx(r"INFO: task "), "INFO: task hung in {0}", alt=("hang in {0}",),
               report=(Step(rx(r"INFO: task ")),
                       _later(r"blocked (?:in I/O wait )?for more than [0-9]+ seconds")),
               stack=_trace(chooser=choose_hang_frame)),
        # What is left of an old-style KASAN report whose header was lost.
        Format(rx(r"INFO: (Freed|Allocated) in (.*)"), "INFO: {0} in {1}", corrupted=True),
        Format(rx(r"INFO:\s*$"), "INFO: corrupted", corrupted=True),
    ),
    suppressions=tuple(
        lazy(p)
        for p in (
            r"INFO: lockdep is turned off",
            r"INFO: Stall ended before state dump start",
            r"INFO: NMI handler",
            r"INFO: recovery required on readonly filesystem",
            r"(handler|interrupt).*took too long",
            r"INFO: sys_.* is not present in /proc/kallsyms",
            r"INFO: no syscalls can create resource",
            r"rmt_storage:INFO:",
            r"_INFO:",
        )
    ),
)


def _simple(header: str, title: str, fmt: str, stack: StackSpec | None = None,
            alt: tuple[str, ...] = (), no_stack_trace: bool = False) -> ReportKind:
    return ReportKind(header, (Format(rx(title), fmt, alt=alt, stack=stack,
                                      no_stack_trace=no_stack_trace),))


_RIP_ONLY = StackSpec(parts=(RIP_FRAME,))

_PANIC = ReportKind(
    "Kernel panic",
    (
        Format(rx(r"Kernel panic - not syncing: stack-protector:"),
               "kernel panic: stack is corrupted in {0}",
               report=(Step(rx(r"Kernel panic - not syncing: stack-protector: Kernel stack is"
                               r" corrupted in: {{FUNC}}")),),
               no_stack_trace=True),
        Format(rx(r"Kernel panic - not syncing: stack-protector:"),
               "kernel panic: stack is corrupted in {0}",
               report=(Step(rx(r"Kernel panic - not syncing: stack-protector: Kernel stack is"
                               r" corrupted in: [a-f0-9]+")),),
               stack=_trace("stack_chk")),
        Format(rx(r"Kernel panic - not syncing: corrupted stack end"),
               "kernel panic: corrupted stack end in {0}",
               report=(Step(rx(r"Kernel panic - not syncing: corrupted stack end detected"
                               r" inside scheduler")),),
               alt=("stack-overflow in {0}",),
               stack=_trace("schedule", "retint_kernel", chooser=choose_stall_frame)),
        Format(rx(r"Kernel panic - not syncing: kernel stack overflow"),
               "kernel stack overflow in {0}", alt=("stack-overflow in {0}",),
               stack=_trace("bad_stack", chooser=choose_stall_frame)),
        Format(rx(r"Kernel panic - not syncing: Attempted to kill init!"),
               "kernel panic: Attempted to kill init!"),
        Format(rx(r"Kernel panic - not syncing: Couldn't open N_TTY ldisc for [^ ]+ --- error"
                  r" -[0-9]+"), "kernel panic: Couldn't open N_TTY ldisc"),
        # These follow another report; alone they mean its header was lost.
        Format(rx(r"Kernel panic - not syncing: Fatal exception"), "kernel panic: Fatal exception",
               corrupted=True),
        Format(rx(r"Kernel panic - not syncing: panic_on_warn set"),
               "kernel panic: panic_on_warn set", corrupted=True),
        Format(rx(r"Kernel panic - not syncing: hung_task: blocked tasks"),
               "kernel panic: hung_task: blocked tasks", corrupted=True),
        Format(rx(r"Kernel panic - not syncing: (.*)"), "kernel panic: {0}"),
    ),
)

_KERNEL_BUG = ReportKind(
    "kernel BUG",
    (
        Format(rx(r"kernel BUG at mm/usercopy.c"), "BUG: bad usercopy in {0}",
               stack=_trace("usercopy", "__check")),
        Format(rx(r"kernel BUG at lib/list_debug.c"), "BUG: corrupted list in {0}",
               alt=("bad-access in {0}",), stack=_trace()),
        # skb helpers BUG_ON their arguments: the caller is to blame.
        Format(rx(r"kernel BUG at (.*)"), "kernel BUG in {1}", stack=_rip_trace("^skb_")),
    ),
)

_TRUSTY = ReportKind(
    "trusty: panic",
    (
        Format(rx(r"trusty: panic.* ASSERT FAILED"), "trusty: ASSERT FAILED: {0}",
               report=(Step(rx(r"trusty: panic \(.*?\):(?: DEBUG)? ASSERT FAILED at \(.*?\):"
                               r" (.+)")),),
               no_stack_trace=True),
        Format(rx(r"trusty: panic.* ASSERT FAILED.*: *(.*)"), "trusty: ASSERT FAILED: {0}",
               corrupted=True),
        Format(rx(r"trusty: panic"), "trusty: panic: {0}",
               report=(Step(rx(r"trusty: panic \(.*?\): (.+)")),), no_stack_trace=True),
    ),
)

_RUST_PANIC = ReportKind(
    "rust_kernel: panicked",
    (
        Format(rx(r"rust_kernel: panicked"), "{0} in {1}",
               report=(Step(rx(r"rust_kernel: panicked at ")), Step(lazy(r"^(.+)$"))),
               stack=_trace(r"__rustc::rust_begin_unwind")),
    ),
)

# Order matters: a line is classified by the first kind whose header it holds.
REPORT_KINDS: tuple[ReportKind, ...] = (
    _BUG,
    _WARNING,
    _INFO,
    ReportKind(
        "Unable to handle kernel",
        (Format(rx(r"Unable to handle kernel (paging request|NULL pointer dereference"
                   r"|access to user memory)"),
                "BUG: unable to handle kernel {0} in {1}", alt=("bad-access in {1}",),
                stack=_rip_trace()),),
    ),
    ReportKind(
        "general protection fault",
        (Format(rx(r"general protection fault.*:"), "general protection fault in {0}",
                alt=("bad-access in {0}",), stack=_rip_trace()),),
        # A user-space GPF logged by the kernel ("... error:0 in libc.so").
        suppressions=(lazy(r"general protection fault .* error:\d+ in "),),
    ),
    _simple("stack segment: ", r"stack segment: ", "stack segment fault in {0}", _rip_trace()),
    _PANIC,
    _simple("PANIC: double fault", r"PANIC: double fault", "PANIC: double fault in {0}",
            _RIP_ONLY),
    _RUST_PANIC,
    _KERNEL_BUG,
    _simple("Kernel BUG", r"Kernel BUG (.*)", "kernel BUG {0}"),
    _simple("BUG kmalloc-", r"BUG kmalloc-.*: Object already free", "BUG: Object already free"),
    _simple("divide error:", r"divide error: ", "divide error in {0}", _RIP_ONLY),
    # Misspelling some kernels print for the same trap.
    _simple("divide_error:", r"divide_error: ", "divide error in {0}", _RIP_ONLY),
    _simple("invalid opcode:", r"invalid opcode: ", "invalid opcode in {0}", _RIP_ONLY),
    # Kernels since 6.9 print die()'s reason after "Oops: " ("Oops: int3: 0000 [#1]
    # SMP"); the reasons with a table entry of their own (general protection
    # fault, invalid opcode) match above, this is every other one.
    ReportKind("Oops: ", (Format(rx(r"Oops: ([a-z][a-z0-9 ]*[a-z0-9]): [0-9a-f]{4} \[#"),
                                 "{0} in {1}", alt=("bad-access in {1}",),
                                 stack=_rip_trace()),),
               # "Oops: 0000 [#1]" is the error code line inside a BUG report
               suppressions=(lazy(r"Oops: [0-9a-f]+ \[#"),)),
    ReportKind(
        "UBSAN:",
        (
            Format(rx(r"UBSAN:"), "UBSAN: undefined-behaviour in {0}",
                   report=(Step(rx(r"UBSAN: Undefined behaviour in")),),
                   stack=_trace("ubsan", "overflow")),
            Format(rx(r"UBSAN: array-index-out-of-bounds in"),
                   "UBSAN: array-index-out-of-bounds in {0}", alt=("bad-access in {0}",),
                   stack=_trace("ubsan", "overflow")),
            Format(rx(r"UBSAN:"), "UBSAN: {0} in {1}",
                   report=(Step(rx(r"UBSAN: (.*?) in")),), stack=_trace("ubsan", "overflow")),
        ),
    ),
    ReportKind(
        "Booting the kernel.",
        (Format(rx(r"^Booting the kernel"), "unexpected kernel reboot", no_stack_trace=True),),
        suppressions=(lazy(r"Parsing ELF|Decompressing Linux|Unknown parameter '"),),
    ),
    _simple("unregister_netdevice: waiting for",
            r"unregister_netdevice: waiting for (?:.*) to become free",
            "unregister_netdevice: waiting for DEV to become free", no_stack_trace=True),
    _simple("VFS: Close: file count is 0", r"VFS: Close: file count is 0",
            "VFS: Close: file count is zero (use-after-free)", no_stack_trace=True),
    _simple("VFS: Busy inodes after unmount", r"VFS: Busy inodes after unmount",
            "VFS: Busy inodes after unmount (use-after-free)", no_stack_trace=True),
    # arm64 "Internal error: synchronous external abort" is arm's paging request.
    _simple("Internal error:", r"Internal error:", "Internal error in {0}", _rip_trace(),
            alt=("bad-access in {0}",)),
    _simple("Unhandled fault:", r"Unhandled fault:", "Unhandled fault in {0}", _rip_trace(),
            alt=("bad-access in {0}",)),
    _simple("Alignment trap:", r"Alignment trap:", "Alignment trap in {0}", _rip_trace()),
    _TRUSTY,
    # Failures of the syzkaller executor itself, common in fuzzing logs.
    _simple("SYZFAIL:", r"SYZFAIL:(.*)", "SYZFAIL:{0}", no_stack_trace=True),
    ReportKind("SYZFATAL:", (Format(rx(r"SYZFATAL:(.*)()"), "SYZFATAL:{0}", alt=("SYZFATAL{1}",),
                                    no_stack_trace=True),)),
    ReportKind(
        "panic:",
        (
            Format(rx(r"panic: Sentry detected .* stuck task"),
                   "panic: Sentry detected stuck tasks", no_stack_trace=True),
            Format(rx(r"panic:(.*)"), "panic:{0}", no_stack_trace=True),
        ),
        suppressions=(lazy(r"_panic:"), lazy(r"xlog_status:"),
                      lazy(r"ddb\.onpanic:"), lazy(r"evtlog_status:")),
    ),
)

# Start markers that may appear inside another report without starting a new one.
CONTINUATION_MARKERS: tuple[re.Pattern[str], ...] = (
    lazy(r"invalid opcode: 0000"),
    lazy(r"Kernel panic - not syncing"),
    lazy(r"unregister_netdevice: waiting for"),
    # A double fault can happen while handling a page fault of the same report.
    lazy(r"PANIC: double fault"),
    lazy(r"Internal error:"),
)

# Informational messages with a stack trace: inside a report they mean
# another stack got mixed in.
INFO_WITH_STACK: tuple[str, ...] = (
    "vmalloc: allocation failure:",
    "FAULT_INJECTION: forcing a failure",
    "FAULT_FLAG_ALLOW_RETRY missing",
)

# Titles with a console timestamp inside are interleaved lines.
CORRUPTED_TITLES: tuple[re.Pattern[str], ...] = (lazy(r"\[ *[0-9]+\.[0-9]+\]"),)
