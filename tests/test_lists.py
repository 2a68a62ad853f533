"""List walks: integrity checks on synthetic corrupted lists (states a live
kernel must never have), and a real kernel list counted against /proc."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest

from capabilities import require
from kpeek.kernel.lists import (
    BROKEN_BACKLINK,
    CYCLE,
    LIST_POISON1,
    LIST_POISON2,
    MAX_REACHED,
    POISON,
    SELF_LOOP,
    UNREADABLE,
    walk_hlist,
    walk_list,
)
from kpeek.kernel.memory import FakeMemory
from scenarios import PARENT_OF_THREE, family

HEAD = 0xFFFF888000001000
BASE = 0xFFFF888000010000
OFFSET = 0x40  # the list node sits 0x40 bytes into each (fake) entry


def node(i: int) -> int:
    return BASE + i * 0x100 + OFFSET


def build(order: list[int], count: int = 6) -> FakeMemory:
    """A correct circular list HEAD -> node(order[0]) -> ... -> HEAD."""
    mem = FakeMemory()
    mem.map(HEAD, bytes(16))
    for i in range(count):
        mem.map(BASE + i * 0x100, bytes(0x100))
    chain = [HEAD] + [node(i) for i in order]
    for k, addr in enumerate(chain):
        nxt = chain[(k + 1) % len(chain)]
        prv = chain[k - 1]
        mem.write(addr, struct.pack("<QQ", nxt, prv))
    return mem


def set_next(mem: FakeMemory, addr: int, nxt: int) -> None:
    mem.write(addr, struct.pack("<Q", nxt))


def set_prev(mem: FakeMemory, addr: int, prv: int) -> None:
    mem.write(addr + 8, struct.pack("<Q", prv))


def test_a_correct_list_and_an_empty_one():
    walk = walk_list(build([0, 1, 2, 3]), HEAD, entry_offset=OFFSET)
    assert walk.complete and walk.nodes == [node(i) for i in range(4)]
    assert walk.entries == [BASE + i * 0x100 for i in range(4)]
    empty = FakeMemory()
    empty.map(HEAD, struct.pack("<QQ", HEAD, HEAD))
    assert walk_list(empty, HEAD).complete and len(walk_list(empty, HEAD)) == 0


def test_cycle_that_skips_the_head():
    mem = build([0, 1, 2, 3])
    set_next(mem, node(3), node(1))  # 3 -> 1 instead of -> head
    walk = walk_list(mem, HEAD, max_entries=1000)
    assert walk.finding is not None and walk.finding.kind == CYCLE
    assert walk.finding.node == node(3) and walk.finding.pointer == node(1)
    assert walk.nodes == [node(0), node(1), node(2), node(3)]


def test_self_loop_after_a_slab_object_was_added_again():
    mem = build([0, 1, 2])
    # list_add(node(5), head) twice: the second add makes node(5) point to itself
    first = struct.unpack("<Q", mem.read(HEAD, 8))[0]
    mem.write(node(5), struct.pack("<QQ", first, HEAD))
    set_prev(mem, first, node(5))
    set_next(mem, HEAD, node(5))
    mem.write(node(5), struct.pack("<QQ", node(5), HEAD))  # the re-add
    walk = walk_list(mem, HEAD)
    assert walk.finding is not None and walk.finding.kind == SELF_LOOP
    assert walk.finding.node == node(5) and walk.nodes == []


def test_broken_back_link():
    mem = build([0, 1, 2, 3])
    set_prev(mem, node(2), node(0))  # should be node(1)
    walk = walk_list(mem, HEAD)
    assert walk.finding is not None and walk.finding.kind == BROKEN_BACKLINK
    assert walk.finding.node == node(2) and walk.finding.index == 2
    assert walk.finding.pointer == node(0)
    assert walk.nodes == [node(0), node(1)]


def test_head_prev_not_pointing_at_the_last_entry():
    mem = build([0, 1, 2])
    set_prev(mem, HEAD, node(1))
    walk = walk_list(mem, HEAD)
    assert walk.finding is not None and walk.finding.kind == BROKEN_BACKLINK
    assert walk.finding.node == HEAD and len(walk) == 3


def test_poison_from_an_entry_used_after_list_del():
    mem = build([0, 1, 2, 3])
    # node(2) was list_del'ed (poisoned) but node(1) still points to it
    mem.write(node(2), struct.pack("<QQ", LIST_POISON1, LIST_POISON2))
    walk = walk_list(mem, HEAD)
    assert walk.finding is not None and walk.finding.kind == POISON
    assert walk.finding.node == node(2) and walk.finding.pointer == LIST_POISON1
    assert "list_del" in walk.finding.message
    assert walk.nodes == [node(0), node(1)]


def test_unreadable_pointer_and_max_bound():
    mem = build([0, 1, 2])
    set_next(mem, node(1), 0xFFFF888077770000)
    walk = walk_list(mem, HEAD)
    assert walk.finding is not None and walk.finding.kind == UNREADABLE
    assert walk.finding.node == node(1) and walk.finding.pointer == 0xFFFF888077770000
    long_list = build(list(range(6)))
    walk = walk_list(long_list, HEAD, max_entries=4)
    assert walk.finding is not None and walk.finding.kind == MAX_REACHED
    assert not walk.finding.is_corruption and len(walk) == 4


def _hlist(count: int) -> FakeMemory:
    mem = FakeMemory()
    mem.map(HEAD, struct.pack("<Q", node(0) if count else 0))
    for i in range(count):
        mem.map(BASE + i * 0x100, bytes(0x100))
        nxt = node(i + 1) if i + 1 < count else 0
        pprev = HEAD if i == 0 else node(i - 1)
        mem.write(node(i), struct.pack("<QQ", nxt, pprev))
    return mem


def test_hlist_walk_and_its_findings():
    assert walk_hlist(_hlist(4), HEAD).nodes == [node(i) for i in range(4)]
    assert walk_hlist(_hlist(4), HEAD).complete
    cyc = _hlist(4)
    set_next(cyc, node(3), node(1))
    assert walk_hlist(cyc, HEAD).finding.kind == CYCLE
    back = _hlist(4)
    set_prev(back, node(2), HEAD)
    assert walk_hlist(back, HEAD).finding.kind == BROKEN_BACKLINK
    poison = _hlist(4)
    poison.write(node(1), struct.pack("<QQ", LIST_POISON1, LIST_POISON2))
    f = walk_hlist(poison, HEAD).finding
    assert f.kind == POISON and f.node == node(1)
    loop = _hlist(3)
    set_next(loop, node(1), node(1))
    assert walk_hlist(loop, HEAD).finding.kind == SELF_LOOP
    assert walk_hlist(_hlist(5), HEAD, max_entries=2).finding.kind == MAX_REACHED


# -- a real kernel list ---------------------------------------------------------


@pytest.fixture
def parent_with_three_children():
    """A python parent with three sleeping children (and one extra thread)."""
    with family(PARENT_OF_THREE) as fam:
        yield fam.info["parent"], fam.info["kids"]


@pytest.mark.timeout(60)
def test_children_and_thread_lists_of_a_real_process(parent_with_three_children):
    require("bpf")
    from kpeek.targets.live import open_live

    parent, kids = parent_with_three_children
    kernel = open_live()
    task = kernel.object("struct task_struct", _task_address(parent))
    walk = kernel.list_entries(task.member("children"), "struct task_struct", "sibling")
    assert walk.complete, walk.finding
    pids = [kernel.object("struct task_struct", a).member("pid").value() for a in walk.entries]
    assert sorted(pids) == sorted(kids)
    threads = kernel.list_entries(task.member("signal").deref().member("thread_head"),
                                  "struct task_struct", "thread_node")
    tids = [kernel.object("struct task_struct", a).member("pid").value()
            for a in threads.entries]
    assert threads.complete
    assert sorted(tids) == sorted(int(t) for t in os.listdir(f"/proc/{parent}/task"))
    assert len(tids) == 2
    # an hlist: every task of the process group hangs off struct pid.tasks[PIDTYPE_PGID]
    pgid = kernel.types.lookup("enum pid_type")
    pgid_index = next(v.value for v in pgid.enumerators if v.name == "PIDTYPE_PGID")
    group = kernel.list_entries(
        task.member("thread_pid").deref().member(f"tasks[{pgid_index}]"),
        "struct task_struct", f"pid_links[{pgid_index}]", hlist=True)
    assert group.complete, group.finding
    members = [kernel.object("struct task_struct", a).member("pid").value()
               for a in group.entries]
    assert sorted(members) == sorted(_pgid_members(parent))
    assert len(members) == 4


def _pgid_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2 :].split()[2]) == pgid:
                    out.append(int(entry))
    return out


def _task_address(pid: int) -> int:
    from kpeek.sources.bpf.tasks import task_addresses

    return task_addresses()[pid]


def _cli_with_memory(monkeypatch, first: FakeMemory, second: FakeMemory) -> None:
    """Point the list verb at synthetic memory (first walk, then the re-check)."""
    import kpeek.commands.listwalk as listwalk
    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.kernel.program import Kernel

    class Rereadable:  # the first walk sees ``first``; after reread(), ``second``
        def __init__(self) -> None:
            self.now = first

        def read(self, address: int, size: int) -> bytes:
            return self.now.read(address, size)

        def clear_cache(self) -> None:
            self.now = second

    monkeypatch.setattr(listwalk, "open_kernel",
                        lambda *_a, **_k: Kernel(load_vmlinux_btf(), None, Rereadable()))


def test_cli_reports_corruption_with_exit_1(monkeypatch, capsys):
    require("root")
    from kpeek.cli import main

    mem = build([0, 1, 2, 3])
    set_prev(mem, node(2), node(0))
    _cli_with_memory(monkeypatch, mem, mem)
    assert main(["list", hex(HEAD), "-o", hex(OFFSET)]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPTED (broken-backlink) at entry #2 0x{node(2) - OFFSET:x}" in out
    assert out.count("\n") == 3  # two entries, then the finding


def test_cli_rechecks_a_finding_on_a_changing_list(monkeypatch, capsys):
    require("root")
    from kpeek.cli import main

    changing = build([0, 1, 2, 3])
    set_prev(changing, node(2), node(0))
    _cli_with_memory(monkeypatch, changing, build([0, 1, 2, 3]))
    assert main(["list", hex(HEAD), "-o", hex(OFFSET)]) == 0
    out = capsys.readouterr().out
    assert "the list was changing, not corrupted" in out
    assert "4 entries; the list returns to its head" in out


def _cli_with_memories(monkeypatch, memories) -> None:
    """Each reread() moves to the next memory (the last one stays)."""
    from kpeek.commands import listwalk
    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.kernel.program import Kernel

    class Sequence:
        def __init__(self) -> None:
            self.i = 0

        def read(self, address: int, size: int) -> bytes:
            return memories[self.i].read(address, size)

        def clear_cache(self) -> None:
            self.i = min(self.i + 1, len(memories) - 1)

    monkeypatch.setattr(listwalk, "open_kernel",
                        lambda *_a, **_k: Kernel(load_vmlinux_btf(), None, Sequence()))


def _broken_at(n: int):
    mem = build([0, 1, 2, 3, 4, 5])
    set_prev(mem, node(n), node(0))
    return mem


def test_a_fault_that_moves_every_walk_is_changing_not_corrupt(monkeypatch, capsys):
    """Children coming and going: every walk stops somewhere else. Not CORRUPTED, exit 0."""
    require("root")
    from kpeek.cli import main

    _cli_with_memories(monkeypatch, [_broken_at(n) for n in (2, 3, 4, 5, 2, 3)])
    assert main(["list", hex(HEAD), "-o", hex(OFFSET)]) == 0
    out = capsys.readouterr().out
    assert "changing" in out and "CORRUPTED" not in out


def test_a_fault_two_walks_agree_on_is_corruption(monkeypatch, capsys):
    """The first re-walk differs, the next two agree: that fault is real."""
    require("root")
    from kpeek.cli import main

    _cli_with_memories(monkeypatch, [_broken_at(2), _broken_at(4), _broken_at(3),
                                     _broken_at(3)])
    assert main(["list", hex(HEAD), "-o", hex(OFFSET)]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPTED (broken-backlink) at entry #3 0x{node(3) - OFFSET:x}" in out
