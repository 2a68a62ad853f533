"""The cut-down BTF the BPF objects are relocated against (coretarget.py):
the kernel gets the very same programs as from a relocation against all of
/sys/kernel/btf/vmlinux, the file is this boot's and the user's own, and
without it (no bpftool, a bad file) objects load as before."""

from __future__ import annotations

import os

import pytest

from capabilities import require
from kpeek.sources.bpf import coretarget, loaded
from kpeek.sources.bpf.bpfsys import ProgInfo
from kpeek.sources.bpf.libbpf import BpfObject
from scenarios import PIPE_FORK_DUP2, children_of, family


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    require("root", "bpf")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return str(tmp_path / "kpeek")


def _tags(obj: BpfObject) -> dict[str, bytes]:
    return {name: ProgInfo(fd).tag for name, fd in obj.program_fds().items()}


@pytest.mark.parametrize("name", ["snapshot", "reader"])
def test_the_kernel_gets_the_same_programs(cache, name) -> None:
    """The kernel's tag hashes each program's instructions after relocation:
    equal tags, equal programs (the same field offsets, the same existence
    checks of this kernel's fields and helpers)."""
    data = loaded.shipped_object(name)
    core = coretarget.target_btf(name, data, loaded._object_path(name))
    assert core is not None and core.startswith(cache) and os.path.getsize(core) < 1 << 20
    cut, whole = BpfObject(data, name, core_btf=core), BpfObject(data, name)
    try:
        assert _tags(cut) == _tags(whole)
        assert len(_tags(whole)) == len(set(_tags(whole))) > 1
    finally:
        cut.close()
        whole.close()


def test_made_once_a_boot_and_used_only_if_private(cache, monkeypatch) -> None:
    data = loaded.shipped_object("snapshot")
    path = loaded._object_path("snapshot")
    first = coretarget.target_btf("snapshot", data, path)
    made = []
    monkeypatch.setattr(coretarget, "_make", lambda *a: made.append(a) or False)
    assert coretarget.target_btf("snapshot", data, path) == first and not made
    st = os.stat(first)
    assert st.st_mode & 0o777 == 0o600 and os.stat(cache).st_mode & 0o777 == 0o700
    os.chmod(first, 0o644)  # readable by others: not used, made again
    assert coretarget.target_btf("snapshot", data, path) is None and len(made) == 1
    os.chmod(first, 0o600)
    os.chown(first, 1000, 1000)
    assert coretarget.target_btf("snapshot", data, path) is None and len(made) == 2
    os.chown(first, 0, 0)
    # another object's bytes (another kpeek version): another key
    assert coretarget.target_btf("snapshot", data + b"\0", path) is None and len(made) == 3
    assert coretarget.target_btf("snapshot", data, path) == first


def test_without_bpftool_or_with_a_bad_file_objects_load_as_before(cache, monkeypatch) -> None:
    import shutil

    monkeypatch.setenv("KPEEK_KEEP_BPF", "0")
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    data = loaded.shipped_object("snapshot")
    assert coretarget.target_btf("snapshot", data, loaded._object_path("snapshot")) is None
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", os.path.dirname(cache))
    core = coretarget.target_btf("snapshot", data, loaded._object_path("snapshot"))
    with open(core, "wb") as f:
        f.write(b"\x9f\xeb\x01\x00" + b"\xff" * 64)  # BTF magic, then nonsense
    obj, _ = loaded._load("snapshot", frozenset({"snapshot_tasks"}))
    try:
        assert ProgInfo(obj.program_fds()["snapshot_tasks"]).id > 0
    finally:
        obj.close()


def test_snapshots_through_either_relocation_agree(cache, monkeypatch) -> None:
    from kpeek.sources.bpf import snapshot

    monkeypatch.setenv("KPEEK_KEEP_BPF", "0")
    monkeypatch.setenv("KPEEK_ID_KEY", "coretarget-test")
    monkeypatch.setattr(loaded, "_objects", {})
    monkeypatch.setattr(loaded, "_iterators", {})
    with family(PIPE_FORK_DUP2) as fam:
        pids = [fam.info["parent"], *children_of(fam.info["parent"])]
        cut = snapshot.take_snapshot(pids, stacks=True, all_namespaces=True)
        assert any(f.startswith("core-snapshot-") for f in os.listdir(cache))
        monkeypatch.setattr(loaded, "_objects", {})
        monkeypatch.setattr(loaded, "_iterators", {})
        monkeypatch.setattr(coretarget, "target_btf", lambda *a: None)
        monkeypatch.setattr(coretarget, "iter_btf_ids", lambda targets: {})
        whole = snapshot.take_snapshot(pids, stacks=True, all_namespaces=True)
    assert [(t.pid, t.comm, t.state, t.wchan, t.kernel_stack, t.namespaces, t.address)
            for t in cut.tasks] == [
        (t.pid, t.comm, t.state, t.wchan, t.kernel_stack, t.namespaces, t.address)
        for t in whole.tasks]
    assert cut.fds == whole.fds and cut.inodes == whole.inodes
    assert {k: (f.path, f.pos, f.flags, f.f_mode) for k, f in cut.open_files.items()} == {
        k: (f.path, f.pos, f.flags, f.f_mode) for k, f in whole.open_files.items()}


def test_a_bpftool_others_may_write_is_not_run(cache, tmp_path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ran"
    fake = bin_dir / "bpftool"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    bin_dir.chmod(0o777)  # anyone could have put it there
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    data = loaded.shipped_object("snapshot")
    assert coretarget.target_btf("snapshot", data, loaded._object_path("snapshot")) is None
    assert not marker.exists()
    bin_dir.chmod(0o755)  # root's own folder: that one is run (and makes nothing here)
    assert coretarget.target_btf("snapshot", data, loaded._object_path("snapshot")) is None
    assert marker.exists()


def test_a_new_file_removes_another_boots_but_not_this_boots(tmp_path) -> None:
    """Made again (another key), the cut-down BTF of an object removes the
    files of earlier boots, not another of this boot (a second kpeek
    installation's object): each would otherwise remake its own on every run."""
    from kpeek import cachedir

    folder = str(tmp_path)
    old, other = tmp_path / "core-snapshot-old.btf", tmp_path / "core-snapshot-other.btf"
    old.write_bytes(b"x")
    other.write_bytes(b"y")
    os.utime(old, (1, 1))  # long before this boot
    def write(path: str) -> bool:
        with open(path, "wb") as f:
            return bool(f.write(b"z"))

    dir_fd = cachedir.open_dir(folder, create=False)
    try:
        assert cachedir.replace(folder, dir_fd, "core-snapshot-new.btf", write,
                                stale_prefix="core-snapshot-")
    finally:
        os.close(dir_fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core-snapshot-new.btf",
                                                           "core-snapshot-other.btf"]
