"""kpeek print VAR (crash's p): a global by name with its type, over a kernel's
symbols and memory; per-CPU and unknown variables say why in one line."""

from __future__ import annotations

import struct as pack

import pytest

from capabilities import require
from kpeek.cli import main
from kpeek.kernel.btf import load_vmlinux_btf
from kpeek.kernel.program import Kernel
from kpeek.kernel.symbols import Kallsyms

JIFFIES = 0xFFFFFFFF82000000
TASK = 0xFFFFFFFF82100000


class Memory:
    """A dump's memory in miniature: jiffies, and a task_struct named init."""

    def __init__(self) -> None:
        self.bytes = {JIFFIES: pack.pack("<Q", 4294967296 + 1234)}

    def read(self, address: int, size: int) -> bytes:
        for base, data in self.bytes.items():
            if base <= address and address + size <= base + len(data):
                return data[address - base:address - base + size]
        return bytes(size)


@pytest.fixture
def dump_like(monkeypatch):
    from kpeek.commands import printvar

    btf = load_vmlinux_btf()
    task = btf.lookup("struct task_struct")
    comm = task.resolve().offsetof("comm")
    mem = Memory()
    mem.bytes[TASK] = bytearray(task.resolve().size)
    mem.bytes[TASK][comm:comm + 8] = b"swapper\0"
    mem.bytes[TASK] = bytes(mem.bytes[TASK])
    syms = Kallsyms.from_text(f"{JIFFIES:016x} D jiffies\n{TASK:016x} D init_task\n")
    monkeypatch.setattr(printvar, "open_kernel", lambda *_a, **_k: Kernel(btf, syms, mem))


def test_print_a_global_with_the_type_given(dump_like, capsys):
    assert main(["print", "jiffies", "--type", "long unsigned int"]) == 0
    assert str(4294967296 + 1234) in capsys.readouterr().out


def test_print_members_of_a_struct_global(dump_like, capsys):
    assert main(["print", "init_task.comm", "--type", "task_struct"]) == 0
    assert '"swapper"' in capsys.readouterr().out


def test_per_cpu_and_unknown_variables_say_why(capsys):
    require("root")
    assert main(["print", "runqueues"]) == 3
    assert "per-CPU" in capsys.readouterr().err
    assert main(["print", "jiffies"]) == 2
    assert "--type" in capsys.readouterr().err
    assert main(["print", "jiffies", "--type", "long unsigned int"]) in (0, 3)
    err = capsys.readouterr().err
    assert err == "" or ("kallsyms" in err and err.count("\n") == 1)
