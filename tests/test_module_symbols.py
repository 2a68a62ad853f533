"""Module symbols joined to the kernel's: the same answers as one table built
from scratch, and sizes that end where the module's text ends."""

from __future__ import annotations

import pytest

from kpeek.kernel.symbols import Kallsyms


@pytest.fixture(scope="module")
def base() -> Kallsyms:
    text = "\n".join(f"ffffffff8{i:07x} {'T' if i % 3 else 't'} f{i}" for i in range(0, 4096, 16))
    return Kallsyms.from_text(text)


@pytest.mark.parametrize("at", [0xFFFFFFFFC0000000, 0xFFFFFFFF80000808])
def test_extended_agrees_with_a_table_built_whole(base: Kallsyms, at: int):
    """Above the kernel (the fast path) and among its symbols (a full rebuild)."""
    extra = [(at + 0x40, "t", "mod_b", "m"), (at, "t", "mod_a", "m"),
             (at + 0x40, "T", "alias", "m")]
    joined = base.extended(extra, ends=[at + 0x100])
    addresses, kinds, names, modules = (list(x) for x in base._names_raw)
    for a, k, n, m in extra:
        addresses.append(a)
        kinds.append(k)
        names.append(n)
        modules.append(m)
    whole = Kallsyms(addresses, kinds, names, modules)
    whole._ends = [at + 0x100]
    for probe in [at, at + 0x3F, at + 0x40, at + 0x41, 0xFFFFFFFF80000010, 0xFFFFFFFF80000FF0]:
        a, b = joined.lookup(probe), whole.lookup(probe)
        assert (a.name, a.address, a.module) == (b.name, b.address, b.module), hex(probe)
    assert joined.address_of("mod_a") == at and joined.symbol("alias").module == "m"
    # One address, two names: the first in the module's symtab order, as its lookup
    assert joined.lookup(at + 0x40).name == "mod_b"
    assert joined.has_module_symbols and not base.has_module_symbols


def test_module_text_end_caps_the_last_symbol(base: Kallsyms):
    at = 0xFFFFFFFFC0000000
    joined = base.extended([(at, "t", "last_fn", "m"), (at + 0x1024, "d", "data", "m")],
                           ends=[at + 0x1000])
    assert joined.format(at + 0x35) == "last_fn+0x35/0x1000 [m]"
    assert joined.lookup(at + 0x1010) is None  # past the text, before the next symbol
    assert joined.lookup(at + 0x1024).name == "data"
