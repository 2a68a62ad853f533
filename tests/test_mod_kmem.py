"""kpeek mod and kmem where the target cannot answer: one line, documented exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from capabilities import require


def kpeek(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpeek", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(180)
def test_live_kernel_without_data_symbols():
    """This machine's kallsyms lists no data symbols: kmem says what it needs
    (exit 3), mod says which symbol is missing, or that the kernel has no
    modules at all (exit 3: what the kernel lacks), neither with a traceback."""
    require("bpf")
    with open("/proc/kallsyms") as f:
        if any(line.split()[2] == "slab_caches" for line in f):
            pytest.skip("this kernel's kallsyms has data symbols")
    kmem = kpeek("kmem", "-s")
    assert kmem.returncode == 3 and "slab_caches" in kmem.stderr
    mod = kpeek("mod")
    expected = "'modules'" if os.path.exists("/proc/modules") else "without loadable modules"
    assert mod.returncode == 3 and expected in mod.stderr, mod.stderr
    for done in (kmem, mod):
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_kmem_needs_an_address():
    done = kpeek("kmem")
    assert done.returncode == 2 and "address or -s" in done.stderr
