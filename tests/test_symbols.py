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


def _aliased_groups() -> dict[int, list[tuple[str, str]]]:
    """Addresses of the kernel image that several symbols share: (name, type
    letter) in the order /proc/kallsyms lists them, the kernel's table order."""
    groups: dict[int, list[tuple[str, str]]] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                groups.setdefault(int(parts[0], 16), []).append((parts[2], parts[1]))
    return {a: g for a, g in groups.items() if len(g) > 1}


def test_every_shared_address_is_named_as_the_kernel_names_it(kallsyms):
    """The kernel's lookup (get_symbol_pos) steps back to the lowest table index
    with the address: the first listed, __pfx_ and section markers included."""
    groups = _aliased_groups()
    assert len(groups) > 20
    wrong = [(hex(a), kallsyms.lookup(a).name, g[0][0]) for a, g in groups.items()
             if kallsyms.lookup(a).name != g[0][0]]
    assert wrong == []


def test_vmlinux_symbols_are_put_in_the_kernels_table_order():
    """A vmlinux's .symtab is in another order; kallsyms_tie_order sorts each
    shared address's names as scripts/kallsyms did for this kernel's table."""
    require("root")
    from kpeek.kernel.symbols import kallsyms_tie_order

    for address, group in _aliased_groups().items():
        shuffled = random.Random(address).sample(group, len(group))
        ordered = sorted(shuffled, key=lambda s: kallsyms_tie_order(s[0], s[1] in "wWvV"))
        assert ordered == group, hex(address)


def test_a_modules_first_symtab_entry_names_a_shared_address():
    """A module's lookup (find_kallsyms_symbol) keeps the first symtab entry at
    an address, skipping unnamed and mapping symbols; /proc/kallsyms lists a
    module's symbols in that order."""
    base = Kallsyms.from_text("ffffffff81000000 T _text\nffffffff81001000 t f\n")
    at = 0xFFFFFFFFC0000000
    joined = base.extended([(at + 0x40, "t", "$x", "m"), (at + 0x40, "t", "local_fn", "m"),
                            (at, "t", "mod_a", "m"), (at + 0x40, "T", "global_alias", "m")],
                           ends=[at + 0x100])
    assert joined.lookup(at + 0x41).name == "local_fn"
    assert joined.format(at + 0x41) == "local_fn+0x1/0xc0 [m]"
    listed = Kallsyms.from_text(f"ffffffff81000000 T _text\n{at + 0x40:x} T global_alias\t[m]\n"
                                f"{at + 0x40:x} t local_fn\t[m]\n")
    assert listed.lookup(at + 0x40).name == "global_alias"  # the first listed, as the kernel


@pytest.mark.timeout(60)
def test_a_task_in_pause_is_named_as_proc_stack_names_it():
    """pause() sleeps in __do_sys_pause, which shares its address with
    __x64_sys_pause and __ia32_sys_pause: /proc/PID/stack prints the first."""
    require("root")
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        stack = ""
        for _ in range(200):
            stack = Path(f"/proc/{proc.pid}/stack").read_text()
            if "sys_pause" in stack:
                break
            time.sleep(0.05)
        frame = next(line.split("] ", 1)[1] for line in stack.splitlines() if "pause" in line)
        name, offset = frame.split("+")[0], int(frame.split("+")[1].split("/")[0], 16)
        syms = Kallsyms.load()
        assert syms.format(syms.address_of(name) + offset) == frame
    finally:
        proc.kill()
        proc.wait()


def test_a_name_looked_up_before_the_table_is_built_gets_the_tables_answer():
    """Kallsyms.load (lazy_from_text) answers names from the text until the
    table is needed:
    the same Symbol (address, size, type; a global before a static one)."""
    require("root")
    rows = _proc_kallsyms()
    counts: dict[str, int] = {}
    for _, _, name in rows:
        counts[name] = counts.get(name, 0) + 1
    repeated = [n for n, c in counts.items() if c > 1][:200]
    names = repeated + random.Random(3).sample([r[2] for r in rows], 500)
    names += [name for group in _aliased_groups().values() for name, _ in group]
    names += ["no_such_symbol_kpeek", rows[-1][2]]
    with open("/proc/kallsyms") as f:
        text = f.read()
    table = Kallsyms.from_text(text)
    for name in names:
        lazy = Kallsyms.lazy_from_text(text)
        assert lazy.symbol(name) == table.symbol(name), name
        assert lazy.address_of(name) == table.address_of(name), name
        assert "_text" in lazy.__dict__ or name in (rows[-1][2], "no_such_symbol_kpeek") \
            or table.symbol(name).module, name  # answered without building the table
