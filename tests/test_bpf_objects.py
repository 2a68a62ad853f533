"""The BPF objects shipped in the package: fresh, reproducible, and free of
anything from the machine that built them."""

from __future__ import annotations

import json

import pytest

from capabilities import require
from kpeek.sources.bpf import build


def test_every_shipped_object_is_fresh() -> None:
    """Each object was built from the program and header as they are now
    (else: python -m kpeek.sources.bpf.build)."""
    assert build.stale(build.load_manifest()) == []


@pytest.mark.timeout(120)
def test_the_recorded_compiler_rebuilds_each_object_byte_for_byte() -> None:
    require("clang")
    clang = build._tool("clang")
    manifest = build.load_manifest()
    if build.compiler_version(clang) != manifest["compiler"]:
        pytest.fail(f"objects were built by {manifest['compiler']}; setup.sh installs that one")
    for name in build.PROGRAMS:
        rebuilt = build.compile_object(name, clang, build._tool("llvm-strip"))
        assert rebuilt == build.object_path(name).read_bytes(), name


def test_objects_carry_no_build_paths_or_kernel_types() -> None:
    """Relative file names only; types from the hand-kept vmlinux.h, not a
    dump of the build machine's kernel (which would carry thousands)."""
    for name in build.PROGRAMS:
        data = build.object_path(name).read_bytes()
        assert b"/work/" not in data and b"/home/" not in data and b"/tmp/" not in data
        assert b"./" + name.encode() + b".bpf.c" in data
    header = (build.HERE / build.HEADER).read_text()
    assert header.count("struct ") < 150 and "preserve_access_index" in header


def test_manifest_is_package_data() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["kpeek"]
    for pattern in ("sources/bpf/*.bpf.o", "sources/bpf/objects.json"):
        assert pattern in data
    assert json.loads(build.MANIFEST.read_text())["objects"].keys() == set(build.PROGRAMS)


BPF_FUNC_D_PATH = 147
# The iterator that holds a reference to the file it shows while its program
# runs (fget_task_next), the one file the verifier trusts on every kernel:
# only there may a program hand a path to bpf_d_path. (task_vma holds the
# mm's lock, but 6.18.44's verifier no longer trusts vma->vm_file.)
PINNED_PATHS = {"iter/task_file"}


def _sections(data: bytes) -> tuple[list[tuple], list[str]]:
    """The section headers of an ELF64 (little-endian) object, and their names."""
    import struct

    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize)
               for i in range(shnum)]
    names_at = headers[shstrndx][4]
    return headers, [_c_string(data, names_at + h[0]) for h in headers]


def _c_string(data: bytes, at: int) -> str:
    return data[at : data.index(b"\0", at)].decode()


def _code_sections(data: bytes) -> dict[str, bytes]:
    """The executable sections of an ELF64 (little-endian) object, by name."""
    SHF_EXECINSTR = 0x4
    headers, names = _sections(data)
    return {name: data[h[4] : h[4] + h[5]] for h, name in zip(headers, names, strict=True)
            if h[2] & SHF_EXECINSTR}


def _symbols_used(data: bytes, section: str) -> set[str]:
    """The symbols (maps, globals; a section's own symbol by the section's
    name) that the relocations of a code section name."""
    import struct

    SHT_SYMTAB, SHT_REL = 2, 9
    headers, names = _sections(data)
    symtab = next(h for h in headers if h[1] == SHT_SYMTAB)
    strings = headers[symtab[6]][4]
    rel = next(h for h, name in zip(headers, names, strict=True)
               if h[1] == SHT_REL and name == ".rel" + section)
    used = set()
    for _, info in struct.iter_unpack("<QQ", data[rel[4] : rel[4] + rel[5]]):
        st_name, _, _, shndx = struct.unpack_from("<IBBH", data, symtab[4] + (info >> 32) * 24)
        used.add(_c_string(data, strings + st_name) if st_name else names[shndx])
    return used


def test_bpf_d_path_is_called_only_where_the_iterator_pins_the_path() -> None:
    """d_path follows its path's dentries and mounts with no fault handling:
    given a task's fs_struct or its executable's file, which a task
    iterator does not pin (exit_fs and exec free them under it), it crashed
    this machine's kernel under fork/exit churn. Every code section of every
    shipped object (programs and the subprograms any of them may call) is
    read: a call of helper 147 only in the sections of iterators that hold
    what they show."""
    import struct

    for obj in build.PROGRAMS:
        sections = _code_sections(build.object_path(obj).read_bytes())
        assert any(s.startswith("iter/") for s in sections), obj
        for section, code in sections.items():
            calls = [imm for op, regs, _, imm in struct.iter_unpack("<BBhi", code)
                     if op == 0x85 and regs >> 4 == 0]  # BPF_JMP|BPF_CALL of a helper
            if section not in PINNED_PATHS:
                assert BPF_FUNC_D_PATH not in calls, (obj, section)
    sections = _code_sections(build.object_path("snapshot").read_bytes())
    assert "iter/task" in sections and "iter/task_file" in sections


def test_the_walks_run_at_once_share_no_buffer() -> None:
    """A whole-system kpeek files runs the task walk (iter/task: snapshot_tasks,
    and snapshot_roots), the descriptor walk (iter/task_file) and the memory
    map walk (iter/task_vma) at once, each in a thread: an iterator program
    may be preempted on its CPU by another, so no two may share a map a
    program writes (a per-CPU buffer above all), only what userspace sets
    between runs and read-only data."""
    import itertools
    import struct

    data = build.object_path("snapshot").read_bytes()
    code = _code_sections(data)
    used = {}
    for section in ("iter/task", "iter/task_file", "iter/task_vma"):
        calls = [op for op, regs, _, _ in struct.iter_unpack("<BBhi", code[section])
                 if op == 0x85 and regs >> 4 == 1]  # subprograms: .text
        used[section] = _symbols_used(data, section) | (
            _symbols_used(data, ".text") if calls else set())
    assert "scratch" in used["iter/task"]
    for a, b in itertools.combinations(used, 2):
        shared = {name for name in used[a] & used[b] if not name.startswith(".rodata")}
        assert shared <= {"snap_args", "wanted"}, (a, b, shared)
