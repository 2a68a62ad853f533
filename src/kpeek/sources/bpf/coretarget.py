"""The kernel's BTF cut down to the types one BPF object's CO-RE relocations
resolve to, kept for the boot: libbpf relocates against it instead of
searching all of /sys/kernel/btf/vmlinux.

For each type an object names (task_struct, its flavors, file, inode ...),
libbpf walks the ~130,000 types of the kernel's BTF for candidates: 40 ms of
CPU for the snapshot object, more than the verifier takes. ``bpftool gen
min_core_btf`` writes just the types and members those relocations use
(11 KiB); given it as btf_custom_path, libbpf makes the same relocations
(the kernel then computes the same program tags: a test holds them equal)
in a few milliseconds.

The iterators' attach points are BTF ids in the kernel's BTF, which libbpf
would otherwise read whole (5.5 MB) in each process to find three names:
``iters-<key>`` holds those ids for the boot (iter_btf_ids).

The file, ``core-<object>-<key>.btf`` in kpeek's cache folder (cachedir),
is made by the first load of a boot that finds bpftool, keyed by the boot,
the kernel and the object's bytes, and used only on those terms (a file of
this user's, private, in a folder only this user may write). No bpftool,
no cache folder, or a load that fails with it: the object is relocated
against the kernel's BTF as before.
"""

from __future__ import annotations

import os

from kpeek import cachedir

try:  # as cachedir: without hashlib's OpenSSL load
    from _blake2 import blake2b
except ImportError:  # not CPython
    from hashlib import blake2b

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
PREFIX = "core-"
ITERS = "iters-"


def target_btf(name: str, data: bytes, path: str) -> str | None:
    """The path of this boot's cut-down BTF for the object ``name`` (bytes
    ``data``, file ``path``), made now if there is none; None when there is
    none to be had."""
    folder = cachedir.cache_dir()
    key = cachedir.boot_key(name.encode(), blake2b(data, digest_size=16).digest())
    dir_fd = cachedir.open_dir(folder, create=True) if key else None
    if folder is None or dir_fd is None:
        return None
    file = f"{PREFIX}{name}-{key}.btf"
    try:
        fd = cachedir.open_private(dir_fd, file)
        if fd is None:
            if not cachedir.replace(folder, dir_fd, file, lambda tmp: _make(path, tmp),
                                    stale_prefix=f"{PREFIX}{name}-"):
                return None
            fd = cachedir.open_private(dir_fd, file)
            if fd is None:
                return None
        os.close(fd)
        return os.path.join(folder, file)
    finally:
        os.close(dir_fd)


def _make(obj_path: str, out: str) -> bool:
    """Write the object's cut-down BTF to ``out`` with bpftool (once a boot)."""
    import shutil
    import subprocess

    path = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
    bpftool = shutil.which("bpftool", path=path)
    if bpftool is None or not _system_file(bpftool):
        return False
    try:
        done = subprocess.run([bpftool, "gen", "min_core_btf", VMLINUX_BTF, out, obj_path],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and os.path.getsize(out) > 0


def _system_file(path: str) -> bool:
    """Whether ``path`` and its folder belong to root (or this user) and no one
    else may write them: a bpftool a user put on root's PATH is not run."""
    real = os.path.realpath(path)
    for item in (real, os.path.dirname(real)):
        st = os.stat(item)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return False
    return True


def iter_btf_ids(targets: frozenset[str]) -> dict[str, int]:
    """This boot's BTF ids of the iterator ``targets`` (``task_file``...):
    from the cache folder, else found in the kernel's BTF and kept there.
    A target the kernel lacks is left out (libbpf then says so at load)."""
    from kpeek.sources.bpf.libbpf import vmlinux_iter_ids

    folder = cachedir.cache_dir()
    key = cachedir.boot_key(ITERS.encode())
    dir_fd = cachedir.open_dir(folder, create=True) if key and folder else None
    if folder is None or dir_fd is None:
        return vmlinux_iter_ids(targets)
    file = f"{ITERS}{key}"
    try:
        known = _read_ids(dir_fd, file)
        if targets <= known.keys():
            return known
        known.update(vmlinux_iter_ids(targets))
        text = "".join(f"{t} {i}\n" for t, i in sorted(known.items()))
        cachedir.replace(folder, dir_fd, file, lambda tmp: _write(tmp, text),
                         stale_prefix=ITERS)
        return known
    finally:
        os.close(dir_fd)


def _read_ids(dir_fd: int, file: str) -> dict[str, int]:
    fd = cachedir.open_private(dir_fd, file)
    if fd is None:
        return {}
    with open(fd, encoding="utf-8", errors="replace") as f:
        lines = f.read(1 << 16).splitlines()
    known = {}
    for line in lines:
        target, _, number = line.partition(" ")
        if target.isidentifier() and number.isdigit() and int(number) > 0:
            known[target] = int(number)
    return known


def _write(path: str, text: str) -> bool:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True
