"""Iterator programs load with their targets' BTF ids known for the boot
(coretarget.iter_btf_ids): libbpf then reads none of the kernel's BTF, the
kernel attaches each program where libbpf would have, and a wrong id costs
only a second load."""

from __future__ import annotations

import os

import pytest

from capabilities import require
from kpeek.sources.bpf import bpfsys, coretarget, libbpf, loaded
from kpeek.sources.bpf.libbpf import BpfObject

TARGETS = frozenset({"task", "task_file", "task_vma"})  # what the shipped objects iterate


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    require("root", "bpf")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return str(tmp_path / "kpeek")


def _libbpf_ids(targets: frozenset[str]) -> dict[str, int]:
    """Each target's id as libbpf finds it, one read of the kernel's BTF each."""
    lib = libbpf._lib()
    return {t: lib.libbpf_find_vmlinux_btf_id(t.encode(), libbpf._BPF_TRACE_ITER)
            for t in targets}


def _attach_btf_id(prog_fd: int) -> int:
    # struct bpf_prog_info.attach_btf_id (5.16+), at offset 224
    return int.from_bytes(bpfsys._info(prog_fd, 232)[224:228], "little")


def _read_bytes() -> int:
    """Bytes this process has read (/proc/self/io rchar): the kernel's BTF is
    read with read(2), 4 KiB a call."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _snapshot(**kwargs) -> tuple[BpfObject, int]:
    """The snapshot object loaded with ``kwargs``, and the bytes read meanwhile."""
    data = loaded.shipped_object("snapshot")
    core = coretarget.target_btf("snapshot", data, loaded._object_path("snapshot"))
    assert core is not None
    before = _read_bytes()
    obj = BpfObject(data, "snapshot", core_btf=core, **kwargs)
    return obj, _read_bytes() - before


def _targets(obj: BpfObject) -> dict[str, int]:
    return {name: _attach_btf_id(fd) for name, fd in obj.program_fds().items()}


def test_ids_are_libbpf_s_and_kept_for_the_boot(cache, monkeypatch) -> None:
    ids = coretarget.iter_btf_ids(TARGETS)
    assert ids == _libbpf_ids(TARGETS) and len(set(ids.values())) == 3
    (file,) = [f for f in os.listdir(cache) if f.startswith(coretarget.ITERS)]
    assert os.stat(os.path.join(cache, file)).st_mode & 0o777 == 0o600
    asked: list[frozenset[str]] = []
    monkeypatch.setattr(libbpf, "vmlinux_iter_ids", lambda t: asked.append(t) or {})
    assert coretarget.iter_btf_ids(frozenset({"task"})) == ids and not asked  # the file's
    os.chmod(os.path.join(cache, file), 0o644)  # readable by others: not trusted
    coretarget.iter_btf_ids(frozenset({"task"}))
    assert asked == [frozenset({"task"})]


def test_a_target_the_kernel_lacks_is_left_out(cache) -> None:
    assert coretarget.iter_btf_ids(frozenset({"task", "no_such_target"})).keys() == {"task"}


def test_with_ids_libbpf_reads_no_kernel_btf(cache) -> None:
    coretarget.iter_btf_ids(TARGETS)  # this boot's, as a later process finds them
    whole = os.path.getsize(coretarget.VMLINUX_BTF)
    assert whole > 1 << 20
    hinted, read_hinted = _snapshot(iter_ids=coretarget.iter_btf_ids)
    plain, read_plain = _snapshot()
    try:
        assert read_hinted < whole // 4 <= whole <= read_plain
        assert _targets(hinted) == _targets(plain)
        assert set(_targets(hinted).values()) == set(_libbpf_ids(TARGETS).values())
        # and the programs run: the task iterator sees this process
        out = hinted.attach_iter("snapshot_tasks").run()
        assert os.getpid().to_bytes(4, "little") in out
    finally:
        hinted.close()
        plain.close()


def test_a_wrong_id_costs_a_second_load_not_the_object(cache) -> None:
    # Type 1 of the kernel's BTF is no function: the kernel refuses it as a
    # target, and the object is loaded again as libbpf alone would.
    obj, _ = _snapshot(iter_ids=lambda targets: dict.fromkeys(targets, 1))
    try:
        assert _targets(obj) == _targets_of_libbpf(obj)
        assert not obj.refused
    finally:
        obj.close()


def _targets_of_libbpf(obj: BpfObject) -> dict[str, int]:
    lib = libbpf._lib()
    out = {}
    for name in obj.program_fds():
        prog = lib.bpf_object__find_program_by_name(obj._obj, name.encode())
        target = lib.bpf_program__section_name(prog).decode().partition("/")[2]
        out[name] = _libbpf_ids(frozenset({target}))[target]
    return out
