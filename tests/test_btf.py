"""BTF parser: the real vmlinux BTF (checked against bpftool's own dump) and a
hand-built BTF blob holding every kind, including those vmlinux lacks."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time

import pytest

from kpeek.kernel.btf import (
    VMLINUX_BTF,
    Btf,
    BtfError,
    Kind,
    UnknownMember,
    UnknownType,
    load_btf,
    load_vmlinux_btf,
)

needs_vmlinux = pytest.mark.skipif(
    not os.path.exists(VMLINUX_BTF), reason="kernel without /sys/kernel/btf/vmlinux"
)


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return load_vmlinux_btf()


# -- real vmlinux --------------------------------------------------------------------


@needs_vmlinux
def test_full_parse_under_one_second_without_cache():
    start = time.perf_counter()
    with open(VMLINUX_BTF, "rb") as f:
        btf = Btf(f.read())
    elapsed = time.perf_counter() - start
    assert len(btf) > 10_000
    assert elapsed < 1.0, f"parse took {elapsed:.2f}s"


@needs_vmlinux
def test_loaded_once_per_process_and_nothing_written(tmp_path, monkeypatch):
    """No disk cache: a first run is as fast as any other, and HOME is never written."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    from kpeek.kernel import btf as btf_module

    monkeypatch.setattr(btf_module, "_loaded", {})
    first = load_btf(VMLINUX_BTF)
    assert load_btf(VMLINUX_BTF) is first
    assert list(tmp_path.iterdir()) == []
    assert first.lookup("struct task_struct").size > 1000


@needs_vmlinux
def test_list_head_layout(vmlinux):
    t = vmlinux.lookup("struct list_head")
    assert t.kind == Kind.STRUCT and t.size == 16
    names = [(m.name, m.offset, vmlinux.type(m.type_id).c_name) for m in t.members]
    assert names == [("next", 0, "struct list_head *"), ("prev", 8, "struct list_head *")]
    assert t.declaration("x") == "struct list_head x"


@needs_vmlinux
def test_task_struct_members(vmlinux):
    t = vmlinux.lookup("task_struct")
    for name in ("pid", "tgid", "comm", "children", "sibling", "real_parent"):
        t.member(name)
    _, comm = t.member("comm")
    assert vmlinux.declaration(comm.type_id, "comm") == "char comm[16]"
    assert vmlinux.type(comm.type_id).size == 16
    assert vmlinux.type(t.member("pid")[1].type_id).resolve().size == 4
    # a member inside an anonymous union/struct is found by name
    assert t.offsetof("se.vruntime") > t.offsetof("se")
    with pytest.raises(UnknownMember):
        t.member("no_such_member")


@needs_vmlinux
def test_enum_values(vmlinux):
    e = vmlinux.lookup("enum pid_type")
    values = {v.name: v.value for v in e.enumerators}
    assert values["PIDTYPE_PID"] == 0 and values["PIDTYPE_TGID"] == 1
    assert e.enum_name(1) == "PIDTYPE_TGID"


@needs_vmlinux
def test_bitfield(vmlinux):
    skb = vmlinux.lookup("struct sk_buff")
    bit, m = skb.member("cloned")
    assert m.bitfield_size == 1
    bit2, m2 = skb.member("nohdr")
    assert bit2 == bit + 1 and m2.bitfield_size == 1
    with pytest.raises(UnknownMember):
        skb.offsetof("cloned")


@needs_vmlinux
def test_unknown_type_raises_usage_error(vmlinux):
    with pytest.raises(UnknownType):
        vmlinux.lookup("struct no_such_struct_kpeek")
    assert vmlinux.lookup("struct file *").kind == Kind.PTR


@needs_vmlinux
@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_every_type_matches_bpftool(vmlinux):
    """bpftool's raw dump is an independent parser: every type's kind and name
    must agree, and the members / enum values of every 8th type (kept lean)."""
    raw = subprocess.run(
        ["bpftool", "btf", "dump", "file", VMLINUX_BTF, "format", "raw"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    header = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
    member = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")
    enumval = re.compile(r"^\t'([^']*)' val=(-?\d+)")
    current = None
    members: list = []
    checked = 0

    def finish():
        nonlocal checked
        if current is None or current.id % 8:
            return
        if current.kind in (Kind.STRUCT, Kind.UNION):
            got = [(m.name or "(anon)", m.type_id, m.bit_offset, m.bitfield_size)
                   for m in current.members]
            assert got == members, current
            checked += 1
        elif current.kind in (Kind.ENUM, Kind.ENUM64):
            assert [(v.name, v.value) for v in current.enumerators] == members, current

    for line in raw.splitlines():
        h = header.match(line)
        if h:
            finish()
            tid, kind, name = int(h[1]), h[2], h[3]
            current = vmlinux.type(tid)
            assert current.kind.name == kind, (tid, kind)
            assert (current.name or "(anon)") == name, (tid, name)
            size = re.search(r" size=(\d+)", h[4])
            if size and current.kind not in (Kind.INT,):
                assert current.size == int(size[1]), (tid, name)
            members = []
            continue
        if current is None or current.id % 8:
            continue
        m = member.match(line)
        if m:
            members.append((m[1], int(m[2]), int(m[3]), int(m[4] or 0)))
            continue
        e = enumval.match(line)
        if e and current is not None and current.kind in (Kind.ENUM, Kind.ENUM64):
            members.append((e[1], int(e[2])))
    finish()
    assert checked > 1000 // 8
    assert current is not None and current.id == len(vmlinux) - 1


# -- hand-built BTF with every kind ------------------------------------------------


class _Builder:
    """Writes BTF the way the kernel lays it out (little-endian)."""

    def __init__(self, first_id: int = 1, str_base: int = 0) -> None:
        self.types = bytearray()
        self.strings = bytearray(b"\0")
        self.count = first_id - 1
        self.str_base = str_base  # a split BTF's string offsets follow its base's

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return self.str_base + off

    def add(self, name: str, kind: int, vlen: int, word3: int, extra: bytes = b"",
            kind_flag: bool = False) -> int:
        info = (kind << 24) | vlen | (int(kind_flag) << 31)
        self.types += struct.pack("<III", self.s(name), info, word3) + extra
        self.count += 1
        return self.count

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def _every_kind() -> tuple[Btf, dict[str, int]]:
    b = _Builder()
    ids: dict[str, int] = {}
    ids["int"] = b.add("int", Kind.INT, 0, 4, struct.pack("<I", (1 << 24) | 32))
    ids["char"] = b.add("char", Kind.INT, 0, 1, struct.pack("<I", (2 << 24) | 8))
    ids["ptr"] = b.add("", Kind.PTR, 0, 0)  # void *
    ids["arr"] = b.add("", Kind.ARRAY, 0, 0, struct.pack("<III", ids["char"], ids["int"], 8))
    # struct s { int a; unsigned flags:3 (kind_flag); char name[8]; } with a bitfield
    ids["s"] = b.add("s", Kind.STRUCT, 3, 16, b"".join([
        struct.pack("<III", b.s("a"), ids["int"], 0),
        struct.pack("<III", b.s("flags"), ids["int"], (3 << 24) | 32),
        struct.pack("<III", b.s("name"), ids["arr"], 64),
    ]), kind_flag=True)
    ids["u"] = b.add("u", Kind.UNION, 1, 4, struct.pack("<III", b.s("i"), ids["int"], 0))
    ids["enum"] = b.add("e", Kind.ENUM, 2, 4, struct.pack("<Ii", b.s("E_NEG"), -1)
                        + struct.pack("<Ii", b.s("E_ONE"), 1), kind_flag=True)
    ids["fwd"] = b.add("later", Kind.FWD, 0, 0, kind_flag=True)
    ids["typedef"] = b.add("s_t", Kind.TYPEDEF, 0, ids["s"])
    ids["volatile"] = b.add("", Kind.VOLATILE, 0, ids["int"])
    ids["const"] = b.add("", Kind.CONST, 0, ids["char"])
    ids["restrict"] = b.add("", Kind.RESTRICT, 0, ids["ptr"])
    ids["proto"] = b.add("", Kind.FUNC_PROTO, 2, ids["int"],
                         struct.pack("<II", b.s("x"), ids["int"]) + struct.pack("<II", 0, 0))
    ids["func"] = b.add("f", Kind.FUNC, 1, ids["proto"])
    ids["var"] = b.add("v", Kind.VAR, 0, ids["int"], struct.pack("<I", 1))
    ids["datasec"] = b.add(".data", Kind.DATASEC, 1, 4, struct.pack("<III", ids["var"], 0, 4))
    ids["float"] = b.add("double", Kind.FLOAT, 0, 8)
    ids["decl_tag"] = b.add("tagged", Kind.DECL_TAG, 0, ids["s"], struct.pack("<i", 1))
    ids["type_tag"] = b.add("user", Kind.TYPE_TAG, 0, ids["const"])
    ids["ptr_tagged"] = b.add("", Kind.PTR, 0, ids["type_tag"])
    ids["enum64"] = b.add("big", Kind.ENUM64, 1, 8,
                          struct.pack("<III", b.s("HUGE"), 0x1, 0xDEAD0000))
    ids["fnptr"] = b.add("", Kind.PTR, 0, ids["proto"])
    return Btf(b.blob()), ids


def test_every_kind_parses():
    btf, ids = _every_kind()
    assert len(btf) == len(ids) + 1
    aliases = {"char": "int", "arr": "array", "s": "struct", "u": "union", "proto": "func_proto",
               "ptr_tagged": "ptr", "fnptr": "ptr"}
    for name, tid in ids.items():
        assert btf.type(tid).kind.name.lower() == aliases.get(name, name), name
    assert {btf.type(t).kind for t in ids.values()} == set(Kind) - {Kind.VOID}
    s = btf.lookup("struct s")
    assert [(m.name, m.bit_offset, m.bitfield_size) for m in s.members] == [
        ("a", 0, 0), ("flags", 32, 3), ("name", 64, 0)]
    assert btf.type(ids["arr"]).size == 8
    assert btf.declaration(ids["arr"], "name") == "char name[8]"
    assert btf.lookup("s_t").resolve() == s
    assert btf.type(ids["enum"]).enumerators[0].value == -1  # kind_flag: signed
    assert btf.type(ids["enum64"]).enumerators[0].value == 0xDEAD000000000001
    assert btf.type(ids["fwd"]).c_name == "union later"
    assert btf.type(ids["ptr_tagged"]).c_name == "const char *"
    assert btf.declaration(ids["fnptr"], "cb") == "int (*cb)(int x, ...)"
    assert btf.type(ids["func"]).linkage == 1
    assert btf.type(ids["var"]).linkage == 1
    assert btf.type(ids["datasec"]).section_vars[0].type_id == ids["var"]
    assert btf.type(ids["decl_tag"]).component_idx == 1
    assert btf.type(ids["float"]).size == 8
    assert btf.type(ids["volatile"]).resolve().name == "int"
    assert btf.type(ids["restrict"]).size == 8
    assert btf.type(ids["int"]).int_info == (1, 0, 32)


def test_split_btf_continues_its_base():
    base, ids = _every_kind()
    split = _Builder(first_id=len(base), str_base=len(base._strings))
    ptr_s = split.add("", Kind.PTR, 0, ids["s"])
    mod = split.add("modstruct", Kind.STRUCT, 2, 16, b"".join([
        struct.pack("<III", split.s("owner"), ptr_s, 0),
        # a member name taken from the base's strings ("a")
        struct.pack("<III", base._strings.index(b"a\0"), ids["int"], 64),
    ]))
    btf = Btf(split.blob(), base=base)
    assert len(btf) == len(base) + 2 and mod == len(base) + 1
    t = btf.lookup("struct modstruct")
    assert t.id == mod and t.size == 16
    assert [(m.name, btf.type(m.type_id).c_name) for m in t.members] == [
        ("owner", "struct s *"), ("a", "int")]
    assert btf.lookup("struct s") is base.lookup("struct s")  # found through the base
    assert [x.id for x in btf.types()] == [ptr_s, mod]


def test_malformed_btf_is_a_clean_error():
    btf_blob = _Builder()
    btf_blob.add("int", Kind.INT, 0, 4, struct.pack("<I", 32))
    good = btf_blob.blob()
    with pytest.raises(BtfError):
        Btf(b"\0" * 40)
    with pytest.raises(BtfError):
        Btf(good[:30])
    bad_kind = bytearray(good)
    struct.pack_into("<I", bad_kind, 24 + 4, 31 << 24)
    with pytest.raises(BtfError):
        Btf(bytes(bad_kind))
