"""Files that are not (whole, readable) dumps: one line, exit 2 or 3, never a traceback.

Synthetic ELF cores stand in for dumps this machine cannot make (another
architecture, a dump without VMCOREINFO); real lab dumps are cut short for
truncation.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kpeek.dump.kallsyms import decode_kallsyms
from kpeek.dump.types import btf_from_memory
from kpeek.dump.vmcoreinfo import VmcoreInfo
from kpeek.errors import NotSupported
from kpeek.kernel.memory import FakeMemory
from kpeek.kernel.symbols import Kallsyms
from lab.fixtures import LabDumps


def kpeek(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpeek", *args], capture_output=True,
                          text=True, timeout=120)


def one_line(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name) + 1, len(desc), kind) + pad(name + b"\0") + pad(desc)


def elf_core(path: Path, *, machine: int = 62, notes: bytes = b"", memory: int = 4096) -> Path:
    """An ELF64 core: one PT_NOTE, one PT_LOAD of zeroes at physical 0."""
    phoff, phnum = 64, 2
    notes_at = phoff + 56 * phnum
    load_at = notes_at + len(notes)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 4, machine, 1, 0, phoff, 0, 0, 64, 56, phnum,
                          64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(notes), len(notes), 4)
    phdrs += struct.pack("<IIQQQQQQ", 1, 7, load_at, 0, 0, memory, memory, 4096)
    path.write_bytes(header + phdrs + notes + bytes(memory))
    return path


VMCOREINFO = b"OSRELEASE=6.1.0-57-cloud-amd64\nPAGESIZE=4096\nKERNELOFFSET=0\n"


def test_not_a_dump(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    one_line(kpeek("-c", str(text), "ps"), 2, "not a crash dump")
    one_line(kpeek("-c", str(tmp_path), "sys"), 2, "directory")
    one_line(kpeek("-c", str(tmp_path / "missing"), "log"), 2, "no such file")
    one_line(kpeek("-c", "/bin/true", "sys"), 2, "not a core dump")


def test_other_architecture(tmp_path: Path) -> None:
    core = elf_core(tmp_path / "arm.core", machine=183, notes=note(b"VMCOREINFO", 0, VMCOREINFO))
    one_line(kpeek("-c", str(core), "sys"), 3, "aarch64", "x86-64")


def test_no_vmcoreinfo(tmp_path: Path) -> None:
    core = elf_core(tmp_path / "plain.core", notes=note(b"CORE", 1, bytes(336)))
    one_line(kpeek("-c", str(core), "log"), 3, "no VMCOREINFO", "-device vmcoreinfo")


def test_vmcoreinfo_without_kallsyms_tables() -> None:
    """Kernels before 5.19 do not list the kallsyms tables in VMCOREINFO."""
    with pytest.raises(NotSupported, match=r"5\.19"):
        decode_kallsyms(FakeMemory(), VmcoreInfo.parse(VMCOREINFO), "old.core")


def test_kernel_without_btf() -> None:
    symbols = Kallsyms([0xFFFFFFFF81000000], ["T"], ["_stext"])
    with pytest.raises(NotSupported, match="--vmlinux"):
        btf_from_memory(FakeMemory(), symbols, "nobtf.core")


def test_truncated_dumps(lab_dumps: LabDumps, tmp_path: Path) -> None:
    for dump, keep in ((lab_dumps.elf, 32 << 20), (lab_dumps.elf, 200), (lab_dumps.kdump, 400)):
        cut = tmp_path / f"cut-{dump.name}-{keep}"
        with open(dump, "rb") as src:
            cut.write_bytes(src.read(keep))
        one_line(kpeek("-c", str(cut), "sys"), 2, "truncated")


def test_bad_vmlinux(lab_dumps: LabDumps, tmp_path: Path) -> None:
    one_line(kpeek("-c", str(lab_dumps.elf), "--vmlinux", "/bin/true", "sys"), 3, ".BTF")
    junk = tmp_path / "vmlinux"
    junk.write_bytes(b"not an ELF")
    one_line(kpeek("-c", str(lab_dumps.elf), "--vmlinux", str(junk), "sys"), 2, "ELF")
