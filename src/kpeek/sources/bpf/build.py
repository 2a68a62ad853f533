"""Compile the BPF programs for the running kernel, once, and cache them.

A program is CO-RE C: it includes a ``vmlinux.h`` dumped from the kernel's
own BTF by bpftool, so nothing per-kernel lives in the repository. Objects
are cached under ``$XDG_CACHE_HOME/kpeek/bpf`` (``~/.cache/kpeek/bpf``) keyed
by a hash of the program source, the compiler and the kernel's BTF, so a new
kernel or an edited program gets a fresh build and an unchanged one loads in
milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from kpeek.errors import NotPermitted, NotSupported

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
SOURCE_DIR = Path(__file__).parent

_TARGET_ARCH = {
    "x86_64": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "riscv64": "riscv",
    "s390x": "s390",
    "ppc64le": "powerpc",
}


def cache_dir() -> Path:
    """Where compiled objects and vmlinux.h are kept (created on demand)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kpeek" / "bpf"


@cache
def kernel_btf_digest() -> str:
    """A short hash of the running kernel's BTF: changes with the kernel build.

    Hashes the kernel's version string (release, build number and date), the
    BTF's size and its first 64 KiB: cheap, where hashing all of it (several
    MiB out of sysfs) would cost more than loading a cached program.
    Raises NotSupported when the kernel has no BTF.
    """
    try:
        with open(VMLINUX_BTF, "rb") as f:
            data = f.read(1 << 16) + str(os.fstat(f.fileno()).st_size).encode()
        data += Path("/proc/version").read_bytes()
    except FileNotFoundError:
        raise NotSupported(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux); BPF needs a kernel built "
            "with CONFIG_DEBUG_INFO_BTF=y (use --source procfs)"
        ) from None
    except PermissionError:
        raise NotPermitted(
            "cannot read /sys/kernel/btf/vmlinux; run as root (use --source procfs otherwise)"
        ) from None
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        raise NotSupported(
            f"{name} not found; the BPF source compiles its programs on first use "
            f"(apt-get install {package}, or use --source procfs)"
        )
    return path


@cache
def _clang_identity(clang: str) -> str:
    """Which compiler: its real path, size and mtime (cheaper than running it)."""
    real = os.path.realpath(clang)
    st = os.stat(real)
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def vmlinux_header() -> Path:
    """The cached vmlinux.h of the running kernel, dumped by bpftool if missing."""
    path = cache_dir() / f"vmlinux-{kernel_btf_digest()}" / "vmlinux.h"
    if path.exists():
        return path
    bpftool = _tool("bpftool", "bpftool")
    proc = subprocess.run(
        [bpftool, "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise NotSupported(f"bpftool could not dump the kernel BTF: {msg[-1] if msg else '?'}")
    _atomic_write(path, proc.stdout)
    return path


def compiled_object(name: str) -> bytes:
    """The BPF object file for ``SOURCE_DIR/<name>.bpf.c``, built if not cached.

    Raises NotSupported when the kernel has no BTF or clang/bpftool are
    missing, or when the program does not compile (the message names the
    first compiler error).
    """
    source_path = SOURCE_DIR / f"{name}.bpf.c"
    source = source_path.read_bytes()
    clang = _tool("clang", "clang")
    key = hashlib.blake2b(
        source + _clang_identity(clang).encode() + kernel_btf_digest().encode(),
        digest_size=12,
    ).hexdigest()
    obj_path = cache_dir() / f"{name}-{key}.bpf.o"
    if obj_path.exists():
        return obj_path.read_bytes()
    header = vmlinux_header()
    arch = _TARGET_ARCH.get(platform.machine(), platform.machine())
    with tempfile.TemporaryDirectory(prefix="kpeek-bpf-") as tmp:
        out = Path(tmp) / "prog.o"
        proc = subprocess.run(
            [
                clang, "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{arch}",
                "-I", str(header.parent), "-I", str(SOURCE_DIR),
                "-Wno-unknown-attributes", "-Wno-compare-distinct-pointer-types",
                "-c", str(source_path), "-o", str(out),
            ],
            capture_output=True,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            errors = [
                line
                for line in proc.stderr.decode(errors="replace").splitlines()
                if "error:" in line
            ]
            first = errors[0] if errors else "unknown error"
            raise NotSupported(f"cannot compile BPF program {name}: {first}")
        data = out.read_bytes()
    _atomic_write(obj_path, data)
    _prune(name)
    return data


def _prune(name: str, keep: int = 4) -> None:
    """Drop all but the ``keep`` newest cached builds of one program (older
    sources or other kernels); a kernel booted again just rebuilds."""
    builds = sorted(cache_dir().glob(f"{name}-*.bpf.o"), key=lambda p: p.stat().st_mtime)
    for old in builds[:-keep]:
        old.unlink(missing_ok=True)
