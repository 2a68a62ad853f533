"""A guest kernel that runs this checkout: the host's root file system, shared
read-only over virtio-fs, under a tmpfs overlay.

    with HostRootGuest(debian_kernel()) as vm:
        out = vm.run(["/work/kpeek/.venv/bin/kpeek", "ps"], timeout=300)

The guest kernel (Debian's cloud kernel: virtio-fs, no 9p) boots a small
busybox initramfs that loads virtio, fuse and virtiofs, mounts QEMU's
virtiofsd export of "/" read-only as the lower layer of an overlay whose
upper layer is a tmpfs (so the guest may write anywhere, and nothing reaches
the host), binds the kernel's own modules (depmod'ed here: the package has
no modules.dep) on /lib/modules, and hands over to ``guest_init.sh``, which
runs one command given on the kernel command line and prints its exit code.
Everything is killed by pid when the ``with`` ends.
"""

from __future__ import annotations

import lzma
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lab.kernels import KernelTree, _apt_download, _atomic_dir, cache_root
from lab.qemu import GuestError, Machine, dies_with_us

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
BUSYBOX = "busybox"
GUEST_INIT = Path(__file__).with_name("guest_init.sh")
# Loaded in this order by the initramfs (each after what it depends on).
BOOT_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "overlay",
)
MEMORY = "1G"
DONE = b"KPEEK-GUEST-EXIT "

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /lower /rw /newroot
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /mods/$m.ko || echo "KPEEK-GUEST-FAIL insmod $m"; done
mount -t virtiofs -o ro hostroot /lower || echo "KPEEK-GUEST-FAIL virtiofs"
mount -t tmpfs -o size=600m,mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot \
  || echo "KPEEK-GUEST-FAIL overlay"
mkdir -p /newroot/lib/modules/{version}
mount --bind /lower{modules_dir} /newroot/lib/modules/{version}
umount /proc
exec switch_root /newroot /bin/sh {init}
"""


# Debian 12's backports kernel: task_struct.blocker and file.f_ref still
# missing (6.16+, 6.13+), delayed dequeue (6.12) present.
BACKPORTS = "6.12.117+deb12-cloud-amd64"


def image_kernel(version: str = BACKPORTS) -> KernelTree:
    """A kernel from its image package alone (no headers: nothing is built
    against it), fetched with apt-get download, unpacked and cached."""

    def make(tmp: Path) -> None:
        _apt_download([f"linux-image-{version}-unsigned"], tmp)
        for deb in tmp.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
            deb.unlink()

    return KernelTree(_atomic_dir(cache_root() / f"debian-{version}", make), version)


def modules_with_dep(tree: KernelTree) -> Path:
    """The kernel's /lib/modules/VERSION with modules.dep: a hard-linked copy
    of the unpacked tree with depmod run on it (cached)."""

    def make(tmp: Path) -> None:
        shutil.copytree(
            tree.modules,
            tmp / "lib" / "modules" / tree.version,
            copy_function=os.link,
            symlinks=True,
            ignore=shutil.ignore_patterns("build", "source"),
        )
        subprocess.run([_depmod(), "-b", str(tmp), tree.version], check=True, capture_output=True)

    root = _atomic_dir(cache_root() / f"depmod-{tree.version}", make)
    return root / "lib" / "modules" / tree.version


def _depmod() -> str:
    found = shutil.which("depmod") or shutil.which("depmod", path="/usr/sbin:/sbin")
    if not found:
        raise GuestError("depmod not found (apt-get install kmod)")
    return found


def initramfs(tree: KernelTree, modules_dir: Path, into: Path) -> Path:
    """A busybox initramfs (newc cpio) that mounts the host root and hands over."""
    root = into / "initramfs"
    (root / "bin").mkdir(parents=True)
    (root / "mods").mkdir()
    shutil.copy(shutil.which(BUSYBOX) or "/bin/busybox", root / "bin" / "busybox")
    loaded = []
    for name in BOOT_MODULES:
        try:
            module = tree.module(name)
        except FileNotFoundError:  # built into this kernel (6.12's virtio and fuse)
            continue
        data = module.read_bytes()
        if module.suffix == ".xz":  # busybox insmod wants it plain
            data = lzma.decompress(data)
        (root / "mods" / f"{name}.ko").write_bytes(data)
        loaded.append(name)
    init = root / "init"
    init.write_text(
        INIT.format(
            modules=" ".join(loaded), version=tree.version, modules_dir=modules_dir, init=GUEST_INIT
        )
    )
    init.chmod(0o755)
    out = into / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=f, check=True
        )
    return out


def _keep(checkout: str) -> str:
    """The kernel argument that keeps a checkout under /tmp visible in the guest,
    whose /tmp is a fresh tmpfs (a CI clone may live in /tmp)."""
    path = Path(checkout).resolve()
    if not path.is_relative_to("/tmp") or path == Path("/tmp") or " " in str(path):
        return ""
    return f" kpeek.keep={path}"


class HostRootGuest:
    """QEMU with ``tree``'s kernel and the host root; :meth:`run` runs one command."""

    def __init__(self, tree: KernelTree, *, cpus: int = 2, log_path: Path | None = None) -> None:
        self.tree = tree
        self.cpus = cpus
        self.log_path = log_path
        self._dir = Path(tempfile.mkdtemp(prefix="kpeek-hostroot-"))
        self._virtiofsd: subprocess.Popen | None = None
        self.vm: Machine | None = None

    def run(
        self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600.0
    ) -> tuple[int, str]:
        """Boot the guest, run ``argv`` (as root, cwd the checkout) and return
        (exit code, console output of the command)."""
        if not VIRTIOFSD.exists():
            raise GuestError(f"{VIRTIOFSD} not found (apt-get install qemu-system-x86)")
        sock = self._dir / "virtiofs.sock"
        self._virtiofsd = subprocess.Popen(
            dies_with_us([
                str(VIRTIOFSD),
                f"--socket-path={sock}",
                "-o",
                "source=/",
                "-o",
                "cache=always",
                "-o",
                "sandbox=chroot",
                "-o",
                "no_posix_lock",
                "-o",
                "no_flock",
            ]),
            stdout=subprocess.DEVNULL,
            stderr=open(self._dir / "virtiofsd.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self._virtiofsd.poll() is not None or time.monotonic() > deadline:
                raise GuestError(
                    "virtiofsd did not start: " + (self._dir / "virtiofsd.log").read_text()[-500:]
                )
            time.sleep(0.05)
        command = " ".join(shlex.quote(a) for a in argv)
        environment = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        script = self._dir / "command.sh"
        script.write_text(
            f"cd {shlex.quote(os.getcwd())}\nexport {environment}\n{command}\n"
            if environment
            else f"cd {shlex.quote(os.getcwd())}\n{command}\n"
        )
        cpio = initramfs(self.tree, modules_with_dep(self.tree), self._dir)
        self.vm = Machine(
            kernel=self.tree.vmlinuz,
            initrd=cpio,
            memory=MEMORY,
            cpus=self.cpus,
            append=f"console=ttyS0 quiet panic=-1 kpeek.command={script}{_keep(os.getcwd())}",
            extra=[
                "-object",
                f"memory-backend-memfd,id=mem,size={MEMORY},share=on",
                "-numa",
                "node,memdev=mem",
                "-chardev",
                f"socket,id=vfs,path={sock}",
                "-device",
                "vhost-user-fs-pci,chardev=vfs,tag=hostroot",
            ],
            log_path=self.log_path,
        )
        start = self.vm.wait_for(b"KPEEK-GUEST-START ", timeout=180)
        start = self.vm.wait_for(b"\n", start=start, timeout=30)
        end = self.vm.wait_for(DONE, start=start, timeout=timeout)
        rc_end = self.vm.wait_for(b"\n", start=end, timeout=30)
        text = bytes(self.vm.console[start : end - len(DONE)]).decode(errors="replace")
        return int(self.vm.console[end:rc_end].strip() or b"-1"), text.replace("\r\n", "\n")

    def kill(self) -> None:
        if self.vm is not None:
            self.vm.kill()
        if self._virtiofsd is not None:
            if self._virtiofsd.poll() is None:
                os.killpg(self._virtiofsd.pid, 9)
            self._virtiofsd.wait(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> HostRootGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
