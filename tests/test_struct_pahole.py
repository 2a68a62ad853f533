"""`kpeek struct` against pahole on this kernel's own BTF: holes counted as pahole
counts them (bit holes next to bitfields apart from byte holes), and members of
typedef'd anonymous structs shown by their typedef name."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest

from kpeek.commands.struct import layout, layout_text
from kpeek.kernel.btf import Kind, load_vmlinux_btf

VMLINUX = "/sys/kernel/btf/vmlinux"


def _pahole(names: list[str]) -> dict[str, tuple[int, int]]:
    """struct name -> (holes, sum of holes) as pahole reports them."""
    if shutil.which("pahole") is None:
        pytest.fail("pahole is missing: setup.sh installs dwarves")
    out = subprocess.run(["pahole", "-F", "btf", "-C", ",".join(names), VMLINUX],
                         capture_output=True, text=True, timeout=120).stdout
    found = {}
    for block in re.split(r"\n(?=struct )", out):
        m = re.match(r"struct (\w+) \{", block)
        if m:
            h = re.search(r"sum members: \d+, holes: (\d+), sum holes: (\d+)", block)
            found[m.group(1)] = (int(h.group(1)), int(h.group(2))) if h else (0, 0)
    return found


@pytest.mark.timeout(120)
def test_holes_as_pahole_counts_them():
    btf = load_vmlinux_btf()
    names = sorted({t.name for t in btf.types() if t.kind == Kind.STRUCT and t.name})
    sample = [*random.Random(14).sample(names, min(400, len(names))), "task_struct"]
    expected = _pahole(sample)
    assert len(expected) > 300
    wrong = []
    for name, (holes, hole_bytes) in expected.items():
        doc = layout(btf.find(name, (Kind.STRUCT,)))
        if (doc["holes"], doc["hole_bytes"]) != (holes, hole_bytes):
            wrong.append((name, (holes, hole_bytes), (doc["holes"], doc["hole_bytes"])))
    assert "task_struct" not in {w[0] for w in wrong}, wrong
    assert len(wrong) <= len(expected) // 100, wrong[:10]


def test_typedef_of_an_anonymous_struct_keeps_its_name():
    btf = load_vmlinux_btf()
    text = "\n".join(layout_text(layout(btf.find("page_counter", (Kind.STRUCT,)))))
    assert re.search(r"\batomic_long_t usage;", text), text
    assert "s64 counter" not in text
