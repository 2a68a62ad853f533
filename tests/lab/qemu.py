"""One QEMU guest: boot, serial console, QMP, dumps, and a kill that always happens.

    with Machine(kernel=tree.vmlinuz, initrd=cpio, append="console=ttyS0",
                 extra=["-device", "vmcoreinfo"]) as vm:
        vm.wait_for(b"READY")
        vm.qmp("query-status")
        vm.dump(path, "elf")

The serial console is QEMU's stdio: everything the guest prints is kept in
``vm.console`` (and in ``log_path`` when given) by a reader thread, so QMP
events and console output never wait on each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def kvm_usable() -> bool:
    """KVM only where the CPU offers virtualization and /dev/kvm opens; elsewhere
    (these machines: /dev/kvm without vmx/svm, where a KVM guest prints nothing) TCG."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
        if " vmx" not in flags and " svm" not in flags:
            return False
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def dies_with_us(cmd: list[str]) -> list[str]:
    """``cmd`` run so that the kernel kills it when the process that started
    it dies (setpriv --pdeathsig: a pytest killed before its teardown ran
    would otherwise leave the guest running); as is without setpriv."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *cmd] if setpriv else cmd


class GuestError(RuntimeError):
    """The guest did not do what the lab asked (with the console's tail)."""


class Machine:
    """A running qemu-system-x86_64; ``kill()`` (or leaving the ``with``) ends it by pid."""

    def __init__(
        self,
        *,
        kernel: Path,
        initrd: Path | None = None,
        append: str = "console=ttyS0",
        memory: str = "256M",
        cpus: int = 2,
        extra: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="kpeek-qemu-"))
        self.qmp_path = self._dir / "qmp.sock"
        self.log_path = log_path
        self.console = bytearray()
        self._console_lock = threading.Condition()
        accel = "kvm" if kvm_usable() else "tcg"
        binary = qemu_binary()
        if binary is None:
            raise GuestError("qemu-system-x86_64 is not installed (setup.sh installs it)")
        cmd = [
            binary,
            "-accel",
            accel,
            "-m",
            memory,
            "-smp",
            str(cpus),
            "-kernel",
            str(kernel),
            "-append",
            append,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if accel == "tcg":
            cmd[1:3] = ["-accel", "tcg,thread=multi"]
            cmd += ["-cpu", "max"]
        if initrd is not None:
            cmd += ["-initrd", str(initrd)]
        cmd += extra or []
        self.command = cmd
        self.proc = subprocess.Popen(
            dies_with_us(cmd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        self._qmp: socket.socket | None = None
        self._qmp_file: Any = None
        self.events: list[dict] = []

    # -- console ---------------------------------------------------------------

    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        try:
            while chunk := self.proc.stdout.read1(65536):
                with self._console_lock:
                    self.console += chunk
                    self._console_lock.notify_all()
                if log:
                    log.write(chunk)
                    log.flush()
        finally:
            if log:
                log.close()
            with self._console_lock:
                self._console_lock.notify_all()

    def tail(self, size: int = 3000) -> str:
        return bytes(self.console[-size:]).decode(errors="replace")

    def wait_for(self, marker: bytes, *, start: int = 0, timeout: float = 120.0) -> int:
        """Wait until ``marker`` appears on the console at or after offset ``start``;
        returns the offset just past it."""
        deadline = time.monotonic() + timeout
        with self._console_lock:
            while True:
                at = self.console.find(marker, start)
                if at >= 0:
                    return at + len(marker)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    state = "timed out" if left <= 0 else f"QEMU exited {self.proc.returncode}"
                    raise GuestError(f"waiting for {marker!r}: {state}; console:\n{self.tail()}")
                self._console_lock.wait(min(left, 1.0))

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    # -- QMP -------------------------------------------------------------------

    def _connect_qmp(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.qmp_path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise GuestError(f"no QMP socket; console:\n{self.tail()}") from None
                time.sleep(0.1)
        self._qmp = sock
        self._qmp_file = sock.makefile("rwb")
        self._qmp_file.readline()  # the greeting
        self.qmp("qmp_capabilities")

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its ``return`` value (GuestError on error)."""
        if self._qmp is None and command != "qmp_capabilities":
            self._connect_qmp()
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._qmp_file.write(json.dumps(message).encode() + b"\n")
        self._qmp_file.flush()
        while True:
            line = self._qmp_file.readline()
            if not line:
                raise GuestError(f"QMP closed during {command}; console:\n{self.tail()}")
            reply = json.loads(line)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise GuestError(f"QMP {command}: {reply['error'].get('desc')}")
            return reply.get("return")

    def dump(self, path: Path, fmt: str = "elf") -> Path:
        """Write the guest's memory to ``path`` with dump-guest-memory (``elf`` or
        ``kdump-zlib``; QEMU 7.2 writes the latter in makedumpfile's flattened form)."""
        args: dict[str, Any] = {"paging": False, "protocol": f"file:{path}"}
        if fmt != "elf":
            args["format"] = fmt
        self.qmp("dump-guest-memory", **args)
        return path

    # -- teardown --------------------------------------------------------------

    def kill(self) -> None:
        """End QEMU by its pid, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self._qmp is not None:
            self._qmp.close()
        self._reader.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def unflatten(flat: Path, out: Path) -> Path:
    """Turn makedumpfile's flattened format (QEMU's kdump-zlib) into a kdump file."""
    with open(flat, "rb") as src:
        subprocess.run(["makedumpfile", "-R", str(out)], stdin=src, capture_output=True, check=True)
    return out
