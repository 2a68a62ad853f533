"""kallsyms: lookups by name and address on the real kernel, and parsing rules."""

from __future__ import annotations

import random

import pytest

from capabilities import require
from kpeek.errors import NotPermitted
from kpeek.kernel.symbols import Kallsyms


@pytest.fixture(scope="module")
def kallsyms() -> Kallsyms:
    require("root")
    return Kallsyms.load()


def _proc_kallsyms() -> list[tuple[int, str, str]]:
    out = []
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, kind, name = line.split()[:3]
            out.append((int(addr, 16), kind, name))
    return out


def test_name_address_round_trip(kallsyms):
    rows = _proc_kallsyms()
    random.seed(7)
    sample = random.sample([r for r in rows if r[1] in "tT"], 300)
    by_name: dict[str, set[int]] = {}
    names_at: dict[int, set[str]] = {}
    for addr, _kind, name in rows:
        by_name.setdefault(name, set()).add(addr)
        names_at.setdefault(addr, set()).add(name)
    for addr, _kind, name in sample:
        assert kallsyms.address_of(name) in by_name[name]
        sym = kallsyms.lookup(addr)
        assert sym is not None and sym.address == addr
        # the name chosen for an address is one of the names kallsyms gives it
        assert sym.name in names_at[addr]
        inside = kallsyms.lookup(addr + max(sym.size - 1, 0))
        assert inside is not None and inside.address == addr


def test_sizes_come_from_the_next_symbol(kallsyms):
    addrs = sorted({a for a, _, _ in _proc_kallsyms()})
    sym = kallsyms.symbol("do_sys_openat2") or kallsyms.symbol("schedule")
    assert sym is not None
    i = addrs.index(sym.address)
    assert sym.size == addrs[i + 1] - addrs[i]
    text = kallsyms.format(sym.address + 3)
    assert text == f"{sym.name}+0x3/0x{sym.size:x}"
    assert kallsyms.lookup(addrs[0] - 1) is None
    assert kallsyms.format(0x10) == "0x10"


def test_module_column_and_duplicates():
    k = Kallsyms.from_text(
        "ffffffffa0000000 t foo\t[mymod]\n"
        "ffffffffa0000000 T __pfx_foo\t[mymod]\n"
        "ffffffffa0000010 T bar\t[mymod]\n"
        "ffffffffa0000040 t baz\n"
    )
    foo = k.lookup(0xFFFFFFFFA0000004)
    assert foo is not None and foo.name == "foo" and foo.module == "mymod" and foo.size == 16
    assert k.format(0xFFFFFFFFA0000011) == "bar+0x1/0x30 [mymod]"
    assert k.address_of("baz") == 0xFFFFFFFFA0000040
    assert k.lookup(0xFFFFFFFFA0000041) is None  # last symbol: size unknown


def test_hidden_addresses_are_not_permitted():
    with pytest.raises(NotPermitted, match="root"):
        Kallsyms.from_text("0000000000000000 T _text\n0000000000000000 t foo\n")


def test_sym_falls_back_to_btf_variables(capsys):
    """No data symbols in kallsyms here: a per-CPU variable is found in BTF, and
    a name in neither says why in one line."""
    require("root")
    from kpeek.cli import main

    assert main(["sym", "runqueues"]) == 0
    out = capsys.readouterr().out
    assert "runqueues: BTF variable, struct rq; offset 0x" in out and ".data..percpu" in out
    assert main(["sym", "kpeek_no_such_variable"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no kernel symbol of that name" in err
