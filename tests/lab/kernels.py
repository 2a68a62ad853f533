"""Debian kernels for the QEMU lab: fetched with apt, unpacked, cached.

    tree = debian_kernel()                      # the pinned bookworm cloud kernel
    tree.vmlinuz, tree.modules, tree.headers    # paths inside the cache
    ko = build_module(tree, Path("mods/abba"))  # an out-of-tree module, cached

Everything lives under ``~/.cache/kpeek-lab/`` (``KPEEK_LAB_CACHE`` overrides)
and is made atomically: unpacked into a temporary directory, then renamed, so
two test sessions racing for the same kernel both end with a whole tree.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The pinned kernel: bookworm-security's cloud flavour has BTF, KALLSYMS_ALL,
# ORC, SLUB freelist hardening and KASLR, and loads unsigned modules.
ABI = os.environ.get("KPEEK_LAB_KERNEL_ABI", "57")
FLAVOUR = "cloud-amd64"


def cache_root() -> Path:
    root = Path(os.environ.get("KPEEK_LAB_CACHE", Path.home() / ".cache" / "kpeek-lab"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel: image, modules, headers (and System.map)."""

    root: Path
    version: str  # the uname -r, e.g. 6.1.0-57-cloud-amd64

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def system_map(self) -> Path:
        return self.root / "boot" / f"System.map-{self.version}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"

    @property
    def modules(self) -> Path:
        """The /lib/modules/VERSION directory."""
        return self.root / "lib" / "modules" / self.version

    @property
    def headers(self) -> Path:
        """The kbuild directory out-of-tree modules build against."""
        return self.root / "usr" / "src" / f"linux-headers-{self.version}"

    def module(self, name: str) -> Path:
        """The path of an in-tree module by file name (``qemu_fw_cfg``)."""
        found = sorted(self.modules.rglob(f"{name}.ko*"))
        if not found:
            raise FileNotFoundError(f"{name}.ko is not in {self.modules}")
        return found[0]


def _apt_download(packages: list[str], into: Path) -> None:
    """apt-get download the packages into ``into``; refresh the lists once if needed."""
    cmd = ["apt-get", "download", "-q", *packages]
    done = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    if done.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        done = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"apt-get download {' '.join(packages)} failed: {done.stderr.strip()[-500:]}"
        )


def _atomic_dir(final: Path, make: Callable[[Path], None]) -> Path:
    """Build ``final`` with ``make(tmpdir)`` in a sibling temp dir, then rename."""
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        make(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def debian_kernel(abi: str = ABI) -> KernelTree:
    """The Debian bookworm ``linux-image-6.1.0-ABI-cloud-amd64`` with its headers."""
    version = f"6.1.0-{abi}-{FLAVOUR}"
    packages = [
        f"linux-image-{version}",
        f"linux-headers-{version}",
        f"linux-headers-6.1.0-{abi}-common",
        "linux-kbuild-6.1",
    ]

    def make(tmp: Path) -> None:
        debs = tmp / "debs"
        debs.mkdir()
        _apt_download(packages, debs)
        tree = tmp / "tree"
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        _check_kbuild_matches(debs, abi)
        shutil.rmtree(debs)
        for item in tree.iterdir():
            item.rename(tmp / item.name)
        tree.rmdir()
        # The flavour's Makefile includes the common tree by absolute path.
        makefile = tmp / "usr" / "src" / f"linux-headers-{version}" / "Makefile"
        common = f"/usr/src/linux-headers-6.1.0-{abi}-common"
        final_common = cache_root() / f"debian-{version}" / common.lstrip("/")
        makefile.write_text(makefile.read_text().replace(common, str(final_common)))

    root = _atomic_dir(cache_root() / f"debian-{version}", make)
    return KernelTree(root, version)


def _check_kbuild_matches(debs: Path, abi: str) -> None:
    """linux-kbuild-6.1 is unversioned: it must come from the same source upload."""
    versions = {deb.name.split("_")[1] for deb in debs.glob("*.deb")}
    if len(versions) != 1:
        raise RuntimeError(
            f"kernel {abi}: packages of different versions {sorted(versions)}; "
            "pin KPEEK_LAB_KERNEL_ABI to the newest ABI in bookworm-security"
        )


def debug_vmlinux(tree: KernelTree) -> Path:
    """The full vmlinux with DWARF from the kernel's -dbg package (~280 MB download)."""
    member = f"./usr/lib/debug/boot/vmlinux-{tree.version}"

    def make(tmp: Path) -> None:
        _apt_download([f"linux-image-{tree.version}-dbg"], tmp)
        (deb,) = tmp.glob("*.deb")
        # Extract the one member: the package holds every module's debuginfo too.
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tmp), member], stdin=tar.stdout, check=True)
        tar.wait()
        deb.unlink()

    root = _atomic_dir(cache_root() / f"dbg-{tree.version}", make)
    return root / member


def build_module(tree: KernelTree, source: Path) -> Path:
    """Build the out-of-tree module in directory ``source`` (its .c files and a
    Kbuild file) against ``tree``'s headers; returns the .ko, cached by content."""
    digest = hashlib.sha256(tree.version.encode())
    for path in sorted(source.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    name = source.name
    final = cache_root() / "modules" / f"{name}-{digest.hexdigest()[:16]}"
    final.parent.mkdir(parents=True, exist_ok=True)

    def make(tmp: Path) -> None:
        for path in source.iterdir():
            if path.is_file():
                shutil.copy(path, tmp / path.name)
        done = subprocess.run(
            ["make", "-s", "-C", str(tree.headers), f"M={tmp}", "modules"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"building module {name} failed:\n{done.stdout}{done.stderr}")

    return _atomic_dir(final, make) / f"{name}.ko"


if __name__ == "__main__":  # fetch ahead of the tests: python tests/lab/kernels.py
    print(debian_kernel().root)
