"""The lazy BTF name index answers as the full name dict does."""

from __future__ import annotations

import random

import pytest

from kpeek.kernel import btf as btfmod


def test_scan_and_dict_agree_on_the_running_kernels_btf():
    with open(btfmod.VMLINUX_BTF, "rb") as f:
        data = f.read()
    fresh = btfmod.Btf(data)
    names = fresh._names._build()
    # Names held by several types (struct + typedef + func...) and random ones.
    shared = [n for n, ids in names.items() if len(ids) > 1][:100]
    sample = shared + random.Random(13).sample(sorted(names), 300)
    sample += ["task_struct", "list_head", "no_such_type_kpeek", "int"]
    for name in sample:
        assert fresh._names._scan(name) == names.get(name, [])
    # Past _SCANS lookups the dict takes over: the same answers.
    for name in sample:
        assert list(fresh._names.get(name, ())) == names.get(name, [])
    assert fresh._names._dict is not None
    t = fresh.find("struct list_head")
    assert t is not None and t.name == "list_head" and t.size == 16


def test_names_in_shared_tails_and_in_the_bases_strings():
    import struct

    from kpeek.kernel.btf import Btf, Kind
    from test_btf import _Builder

    b = _Builder()
    int_id = b.add("int", Kind.INT, 0, 4, struct.pack("<I", 32))
    b.add("hlist_head", Kind.STRUCT, 0, 8)
    # "list_head" named by pointing into the tail of "hlist_head", as deduped
    # string tables may do.
    tail = b.strings.index(b"hlist_head\0") + 1
    b.types += struct.pack("<III", tail, (Kind.STRUCT << 24), 16)
    b.count += 1
    tail_id = b.count
    base = Btf(b.blob())
    assert base.find("struct list_head").id == tail_id
    assert base._names._scan("list_head") == base._names._build()["list_head"] == [tail_id]
    # A module type named with an offset into its base's strings.
    split = _Builder(first_id=len(base), str_base=len(base._strings))
    split.types += struct.pack("<III", tail, (Kind.TYPEDEF << 24), int_id)
    split.count += 1
    mod = Btf(split.blob(), base=base)
    assert mod._names._scan("list_head") == [len(base)]
    assert mod.find("list_head", (Kind.TYPEDEF,)).id == len(base)


def test_a_lazy_walk_answers_as_the_whole_walk():
    """load_btf walks the type section only as far as asked (the types a
    lookup reaches); answers, errors aside, are those of a whole walk."""
    with open(btfmod.VMLINUX_BTF, "rb") as f:
        data = f.read()
    whole = btfmod.Btf(data)
    names = whole._names._build()
    sample = random.Random(7).sample(sorted(names), 40)
    sample += ["list_head", "task_struct", "file", "int", "no_such_type_kpeek"]
    kinds = (btfmod.Kind.STRUCT, btfmod.Kind.UNION, btfmod.Kind.TYPEDEF, btfmod.Kind.ENUM,
             btfmod.Kind.INT)
    for name in sample:
        lazy = btfmod.Btf(data, lazy=True)  # fresh: each lookup starts a walk
        for k in (kinds, (btfmod.Kind.FUNC,), None):
            a, b = whole.find(name, k), lazy.find(name, k)
            assert (a and (a.id, a.kind, a.name)) == (b and (b.id, b.kind, b.name)), name
        assert btfmod.Btf(data, lazy=True)._names._scan(name) == names.get(name, [])
    lazy = btfmod.Btf(data, lazy=True)
    t = lazy.find("struct list_head")
    assert isinstance(lazy._offsets, btfmod._LazyOffsets)  # not walked through
    assert [lazy.declaration(m.type_id, m.name) for m in t.members] == [
        "struct list_head *next", "struct list_head *prev"]
    assert len(lazy) == len(whole) and list(lazy._offsets) == list(whole._offsets)
    assert not isinstance(lazy._offsets, btfmod._LazyOffsets)  # whole now: the plain array
    with pytest.raises(btfmod.BtfError):
        btfmod.Btf(data, lazy=True).type(len(whole))
