"""Capability checks for tests that need root, BPF or FUSE.

A test calls ``require(...)``. On a machine without the capability the test
skips; under CI (CI=true) such a skip is a failure instead, so .ci/run cannot
go green by skipping the tests that matter on a machine that supports them.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _strict() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def time_scale() -> float:
    """How much slower than this machine the tests run (KPEEK_TEST_TIME_SCALE:
    a guest kernel under TCG runs each Python start in seconds); waits for a
    real state to appear are multiplied by it."""
    return float(os.environ.get("KPEEK_TEST_TIME_SCALE", "1"))


def have_root() -> bool:
    return os.geteuid() == 0


def have_bpf() -> bool:
    return have_root() and os.path.exists("/sys/kernel/btf/vmlinux")


def have_clang() -> bool:
    """What rebuilds the shipped BPF objects (setup.sh installs it)."""
    return shutil.which("clang") is not None and shutil.which("llvm-strip") is not None


def have_fuse() -> bool:
    return have_root() and os.path.exists("/dev/fuse")


def have_cgroup_freeze() -> bool:
    """cgroup v2 mounted somewhere with its freezer (cgroup.freeze)."""
    if not have_root():
        return False
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [x.partition(" - ")[0].split()[4] for x in f
                      if x.partition(" - ")[2].startswith("cgroup2 ")]
    except OSError:
        return False
    return any(os.access(m, os.W_OK) and os.path.exists(os.path.join(m, "cgroup.procs"))
               for m in mounts)


def have_fsfreeze() -> bool:
    """fsfreeze, mkfs.ext4 and loop devices: a small ext4 to freeze."""
    return (have_root() and all(shutil.which(t) for t in ("fsfreeze", "mkfs.ext4", "losetup"))
            and os.path.exists("/dev/loop-control"))


def have_graphviz() -> bool:
    return shutil.which("dot") is not None


def have_chromium() -> bool:
    return shutil.which("chromium") is not None


def have_qemu() -> bool:
    """The QEMU lab: qemu-system-x86_64 and the tools that build guests and read dumps
    (TCG works anywhere; KVM is used only where it can run a guest)."""
    return have_root() and all(
        shutil.which(tool) for tool in ("qemu-system-x86_64", "cpio", "makedumpfile", "busybox",
                                        "apt-get", "dpkg-deb", "make", "gcc"))


CAPABILITIES = {
    "root": have_root,
    "bpf": have_bpf,
    "clang": have_clang,
    "fuse": have_fuse,
    "graphviz": have_graphviz,
    "cgroup-freeze": have_cgroup_freeze,
    "fsfreeze": have_fsfreeze,
    "chromium": have_chromium,
    "qemu": have_qemu,
}


def require(*names: str) -> None:
    """Skip (or, under CI, fail) unless every named capability is present."""
    for name in names:
        if not CAPABILITIES[name]():
            message = f"needs {name}, which this machine lacks"
            if _strict():
                pytest.fail(f"{message}; CI machines must have it (CI=true)")
            pytest.skip(message)
