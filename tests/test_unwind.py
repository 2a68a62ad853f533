"""Stacks unwound from kernel memory with the kernel's ORC tables, held against
the kernel's own unwinder (/proc/PID/stack) for real sleeping tasks here."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from capabilities import require
from kpeek.cli import main
from kpeek.kernel.program import Kernel
from kpeek.kernel.symbols import Kallsyms
from kpeek.kernel.unwind import kernel_unwinder, visible
from scenarios import family

# Threads asleep in different places: a pipe read, a futex (Event.wait), a
# nanosleep, a wait4 for a child, a poll on a socket.
SLEEPERS = """
import os, select, socket, threading, time
r, w = os.pipe()
threading.Thread(target=os.read, args=(r, 1), daemon=True).start()
threading.Thread(target=threading.Event().wait, daemon=True).start()
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
a, b = socket.socketpair()
threading.Thread(target=select.select, args=([a], [], []), daemon=True).start()
child = os.fork()
if child == 0:
    hold()
threading.Thread(target=os.waitpid, args=(child, 0), daemon=True).start()
time.sleep(0.5)
report(child=child)
"""


def proc_stack(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stack") as f:
        return [re.sub(r"^\[<[0-9a-f]+>\] ", "", line.strip()) for line in f if line.strip()]


def switches(tid: int) -> tuple[int, int]:
    """The task's voluntary and involuntary context switches: unchanged across
    a span means it never ran in it, so its stack could not change."""
    with open(f"/proc/{tid}/status") as f:
        counts = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
    return int(counts["voluntary_ctxt_switches"]), int(counts["nonvoluntary_ctxt_switches"])


def settled(tid: int, kernel: Kernel, unwind, tries: int = 50):
    """The kernel's stack and ours for a task that did not run across both
    reads: a thread may still be on its way into its wait, or wake for a
    moment (a signal, a preemption on its way back to user mode) and sleep
    again in the same place, and its stack changes under us. Each try rereads
    kernel memory: the reader caches pages, and a retry that unwound the
    cached stack of the first try would compare an old stack with a new one."""
    for _ in range(tries):
        ran = switches(tid)
        before = proc_stack(tid)
        kernel.reread()
        stack = unwind(tid)
        if before and proc_stack(tid) == before and switches(tid) == ran:
            return before, stack
        time.sleep(0.1)
    return before, stack


def addresses(symbols: Kallsyms, frames: list[str]) -> list[int]:
    """'name+0xoff/0xsize' lines as addresses (aliases at one address name it differently)."""
    out = []
    for frame in frames:
        m = re.match(r"\?? ?([^+ ]+)\+0x([0-9a-f]+)/", frame)
        assert m, frame
        out.append(symbols.address_of(m[1]) + int(m[2], 16))
    return out


def threads(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def live_symbols() -> Kallsyms:
    from kpeek.kernel.symbols import load_kallsyms

    return load_kallsyms()


@pytest.fixture
def live():
    """A fresh live kernel per test (its task index is built once, on first use)."""
    require("bpf")
    from kpeek.targets.live import open_live

    return open_live()


@pytest.mark.timeout(120)
def test_orc_unwind_matches_proc_stack(live):
    with family(SLEEPERS) as fam:
        unwinder = kernel_unwinder(live)
        tids = [*threads(fam.pid), fam.info["child"]]
        checked = 0
        for tid in tids:
            expected, stack = settled(tid, live, lambda t: unwinder.task_stack(live.task(t)))
            assert stack.complete, (tid, stack.note)
            assert all(f.reliable for f in stack.frames)
            got = [f.ip for f in visible(stack.frames, live)]
            assert got == addresses(live.symbols, expected), tid
            # ... and named as the kernel names them (aliases: the first listed)
            assert [live.symbols.format(ip) for ip in got] == expected, tid
            checked += bool(expected)
        assert checked >= 6  # the main thread, five sleepers and the child
        # the scheduler's own frames come first, from the saved switch frame
        first = live.symbols.lookup(unwinder.task_stack(live.task(tids[0])).frames[0].ip)
        assert first is not None and first.name == "__schedule"


@pytest.mark.timeout(120)
def test_stack_scan_without_orc_marks_frames_unreliable(live):
    """Symbols without the ORC section markers: the stack is scanned, frames
    get ``?``, and the real return addresses are among them."""
    where, kinds, names, _ = live.symbols._names_raw
    keep = [i for i, n in enumerate(names) if "orc_unwind" not in n]
    symbols = Kallsyms([where[i] for i in keep], [kinds[i] for i in keep],
                       [names[i] for i in keep])
    blind = Kernel(live.types, symbols, live.memory, live.tasks)
    with family(SLEEPERS) as fam:
        tid = threads(fam.pid)[1]
        unwinder = kernel_unwinder(blind)
        expected, stack = settled(tid, blind, lambda t: unwinder.task_stack(blind.task(t)))
        assert not stack.complete and "no ORC" in stack.note
        assert stack.frames and not any(f.reliable for f in stack.frames)
        scanned = iter(f.ip for f in stack.frames)
        assert all(ip in scanned for ip in addresses(symbols, expected)), expected


@pytest.mark.timeout(120)
def test_bt_unwind_cli(capsys):
    require("bpf")
    with family(SLEEPERS) as fam:
        tid = threads(fam.pid)[1]
        assert main(["bt", "--unwind", str(tid), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        frames = addresses(live_symbols(), doc["stacks"][0]["frames"])
        expected = addresses(live_symbols(), proc_stack(tid))
        assert frames[-len(expected):] == expected
        assert main(["bt", "--unwind", str(tid)]) == 0
        assert "#0  __schedule+" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_reread_unwinds_the_stack_the_task_has_now(live):
    """Pages read are a snapshot of one moment; after ``reread`` the unwinder
    follows a thread to its new wait (a pipe read, then a nanosleep)."""
    script = """
    import threading
    r, w = os.pipe()
    def wait():
        os.read(r, 1)
        time.sleep(600)
    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    report(tid=waiter.native_id, w=w)
    """
    unwinder = kernel_unwinder(live)

    def waits_in(tid: int) -> set[str]:
        frames = unwinder.task_stack(live.task(tid)).frames
        return {live.symbols.lookup(f.ip).name for f in frames}

    def sleeping_in(tid: int, name: str) -> set[str]:
        deadline = time.monotonic() + 10
        while not any(name in line for line in proc_stack(tid)):
            assert time.monotonic() < deadline, proc_stack(tid)
            time.sleep(0.05)
        return settled(tid, live, waits_in)[1]

    with family(script) as fam:
        tid = fam.info["tid"]
        pipe_reads = {"pipe_read", "anon_pipe_read"}  # renamed in 6.16
        assert pipe_reads & sleeping_in(tid, "pipe_read")
        with open(f"/proc/{fam.pid}/fd/{fam.info['w']}", "wb") as end:
            end.write(b"x")
        now = sleeping_in(tid, "nanosleep")
        assert any("nanosleep" in name for name in now), now
        assert not pipe_reads & now, now
