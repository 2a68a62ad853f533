"""Typed objects over synthetic memory laid out with the real kernel's BTF."""

from __future__ import annotations

import os
import struct

import pytest

from kpeek.kernel.btf import VMLINUX_BTF, UnknownMember, load_vmlinux_btf
from kpeek.kernel.memory import FakeMemory, MemoryReadError
from kpeek.kernel.objects import Object, ObjectError, container_of

pytestmark = pytest.mark.skipif(not os.path.exists(VMLINUX_BTF), reason="no vmlinux BTF")

TASK = 0xFFFF888000100000
PARENT = 0xFFFF888000200000


class CountingMemory(FakeMemory):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int]] = []

    def read(self, address: int, size: int) -> bytes:
        self.reads.append((address, size))
        return super().read(address, size)


@pytest.fixture(scope="module")
def btf():
    return load_vmlinux_btf()


def _task_bytes(btf, pid: int, comm: bytes, parent: int) -> bytearray:
    t = btf.lookup("struct task_struct")
    buf = bytearray(t.size)
    struct.pack_into("<i", buf, t.offsetof("pid"), pid)
    struct.pack_into("<i", buf, t.offsetof("tgid"), pid)
    buf[t.offsetof("comm") : t.offsetof("comm") + len(comm)] = comm
    struct.pack_into("<Q", buf, t.offsetof("real_parent"), parent)
    return buf


@pytest.fixture
def memory(btf):
    mem = CountingMemory()
    mem.map(TASK, bytes(_task_bytes(btf, 4242, b"worker\xff\x1b", PARENT)))
    mem.map(PARENT, bytes(_task_bytes(btf, 1, b"init", 0)))
    return mem


def test_members_are_sliced_from_one_read(btf, memory):
    task = Object(btf.lookup("struct task_struct"), TASK, memory)
    assert task.member("pid").value() == 4242
    assert task.member("tgid").value() == 4242
    # invalid UTF-8 and an escape byte survive as surrogate escapes
    assert task.member("comm").value() == "worker\udcff\x1b"
    assert memory.reads == [(TASK, btf.lookup("struct task_struct").size)]


def test_deref_and_container_of(btf, memory):
    task = Object(btf.lookup("struct task_struct"), TASK, memory)
    parent = task.member("real_parent").deref()
    assert parent.address == PARENT and parent.member("comm").value() == "init"
    with pytest.raises(ObjectError, match="NULL"):
        parent.member("real_parent").deref()
    node = task.member("sibling").address
    again = container_of(node, "struct task_struct", "sibling", memory, btf)
    assert again.address == TASK and again.member("pid").value() == 4242
    assert task.member("comm")[0].value() == ord("w")
    with pytest.raises(ObjectError, match="out of range"):
        task.member("comm")[16]


def test_enum_bool_and_bitfields(btf):
    mem = FakeMemory()
    mem.map(0x1000, struct.pack("<I", 1))
    assert Object(btf.lookup("enum pid_type"), 0x1000, mem).value() == "PIDTYPE_TGID"
    mem.map(0x2000, b"\x01")
    assert Object(btf.lookup("bool"), 0x2000, mem).value() is True
    skb = btf.lookup("struct sk_buff")
    bit, _ = skb.member("fclone")  # 2-bit field
    raw = bytearray(skb.size)
    raw[bit // 8] |= 0b10 << (bit % 8)
    raw[skb.member("cloned")[0] // 8] |= 1 << (skb.member("cloned")[0] % 8)
    mem.map(0x10000, bytes(raw))
    obj = Object(skb, 0x10000, mem)
    assert obj.member("fclone").value() == 2
    assert obj.member("cloned").value() == 1
    assert obj.member("nohdr").value() == 0


def test_struct_value_merges_anonymous_members(btf, memory):
    head = Object(btf.lookup("struct task_struct"), TASK, memory).member("children")
    value = head.value()
    assert set(value) == {"next", "prev"}
    whole = Object(btf.lookup("struct task_struct"), TASK, memory).value()
    assert whole["pid"] == 4242 and whole["comm"].startswith("worker")


def test_errors(btf, memory):
    task = Object(btf.lookup("struct task_struct"), TASK, memory)
    with pytest.raises(UnknownMember):
        task.member("nope")
    with pytest.raises(ObjectError):
        task.member("pid").deref()
    with pytest.raises(MemoryReadError):
        Object(btf.lookup("struct task_struct"), 0xDEAD000, memory).member("pid").value()


def test_char_arrays_are_text_and_byte_arrays_are_numbers(btf):
    addr = btf.lookup("struct in6_addr")
    mem = FakeMemory()
    mem.map(0x10000, b"abc" + bytes(13))
    octets = Object(addr, 0x10000, mem).member("in6_u.u6_addr8")  # __u8 [16]: bytes
    assert octets.value()[:4] == [97, 98, 99, 0] and len(octets.value()) == 16
    assert btf.declaration(octets.type.id, "x") == "__u8 x[16]"
