"""A busybox guest on a lab kernel, driven through a shell on its serial console.

    tree = debian_kernel()
    initrd = build_initramfs(tmp / "initrd.cpio", modules=[tree.module("qemu_fw_cfg"), ko])
    with boot_busybox(tree, initrd) as guest:
        guest.run("insmod /lib/kpeek/kpeek_pin.ko")
        guest.machine.dump(tmp / "vmcore", "elf")

The init script loads ``qemu_fw_cfg`` first, so with QEMU's ``-device
vmcoreinfo`` every dump carries the guest's VMCOREINFO note.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.kernels import KernelTree
from lab.qemu import GuestError, Machine

READY = b"KPEEK-LAB-READY"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in {preload}; do insmod /lib/kpeek/$m.ko || echo "KPEEK-LAB-INSMOD-FAILED $m"; done
stty -echo -onlcr
export PS1= PS2=
echo {ready}
exec sh
"""


def busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).exists():
            return Path(candidate)
    raise GuestError("busybox-static is not installed (setup.sh installs it)")


def build_initramfs(
    out: Path,
    *,
    modules: list[Path] = (),
    preload: list[str] = ("qemu_fw_cfg",),
    files: dict[str, bytes] | None = None,
) -> Path:
    """A newc cpio at ``out``: busybox, the given modules under /lib/kpeek/, an init
    that insmods ``preload`` (module names) and then runs a shell on the console."""
    with tempfile.TemporaryDirectory(prefix="kpeek-initrd-") as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "tmp", "lib/kpeek"):
            (root / d).mkdir(parents=True)
        shutil.copy(busybox(), root / "bin" / "busybox")
        for ko in modules:
            shutil.copy(ko, root / "lib" / "kpeek" / ko.name)
        for name, data in (files or {}).items():
            path = root / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        init = root / "init"
        init.write_text(INIT.format(preload=" ".join(preload), ready=READY.decode()))
        init.chmod(0o755)
        names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        with open(out, "wb") as f:
            subprocess.run(
                ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names, stdout=f, check=True
            )
    return out


class Guest:
    """A booted busybox guest: ``run()`` a shell command and get its output."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._serial = itertools.count()

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True) -> str:
        """Run one line of shell in the guest; its stdout+stderr (GuestError if it
        exits non-zero and ``check``)."""
        n = next(self._serial)
        # The markers are split in the command so only the output contains them whole.
        begin, end = f"KPEEK-BEGIN-{n}\n".encode(), f"KPEEK-END-{n} ".encode()
        start = len(self.machine.console)
        self.machine.send(
            f'echo "KPEEK-BEGIN""-{n}"; {command} 2>&1; echo "KPEEK-END""-{n} $?"\n'.encode()
        )
        at = self.machine.wait_for(begin, start=start, timeout=timeout)
        stop = self.machine.wait_for(end, start=at, timeout=timeout)
        newline = self.machine.wait_for(b"\n", start=stop, timeout=timeout)
        rc = int(bytes(self.machine.console[stop:newline]).strip() or b"0")
        output = bytes(self.machine.console[at : stop - len(end)]).decode(errors="replace")
        if check and rc != 0:
            raise GuestError(f"guest command {command!r} exited {rc}: {output[-2000:]}")
        return output

    def kill(self) -> None:
        self.machine.kill()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def boot_busybox(
    tree: KernelTree,
    initrd: Path,
    *,
    append: str = "",
    memory: str = "256M",
    cpus: int = 2,
    extra: list[str] | None = None,
    log_path: Path | None = None,
    timeout: float = 120.0,
) -> Guest:
    """Boot ``tree``'s kernel with ``initrd`` (from build_initramfs) and wait for
    its shell. QEMU gets ``-device vmcoreinfo`` plus ``extra``."""
    cmdline = f"console=ttyS0 quiet panic=0 {append}".strip()
    machine = Machine(
        kernel=tree.vmlinuz,
        initrd=initrd,
        append=cmdline,
        memory=memory,
        cpus=cpus,
        extra=["-device", "vmcoreinfo", *(extra or [])],
        log_path=log_path,
    )
    try:
        machine.wait_for(READY, timeout=timeout)
    except BaseException:
        machine.kill()
        raise
    if b"KPEEK-LAB-INSMOD-FAILED" in machine.console:
        machine.kill()
        raise GuestError(f"a preloaded module did not load; console:\n{machine.tail()}")
    return Guest(machine)
