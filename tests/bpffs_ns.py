"""A bpffs of the tests' own at /sys/fs/bpf, in a private mount namespace.

Kept BPF programs (kpeek.sources.bpf.kept) live in a bpffs at /sys/fs/bpf.
Tests and benchmarks must not leave pins on the machine, and some machines
have no bpffs mounted there at all: :func:`private_bpffs` starts a holder
process in a mount namespace of its own (propagation private: nothing is
seen outside) with a fresh bpffs at /sys/fs/bpf, runs commands in it with
nsenter, and reaches its files from outside through /proc/HOLDER/root.
Killing the holder ends the namespace, and with it every pin.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass


@dataclass
class Bpffs:
    holder: subprocess.Popen

    @property
    def root(self) -> str:
        """/sys/fs/bpf of the namespace, as seen from outside it."""
        return f"/proc/{self.holder.pid}/root/sys/fs/bpf"

    @property
    def home(self) -> str:
        """kpeek's directory there (kept.HOME)."""
        return f"{self.root}/kpeek"

    def prefix(self) -> list[str]:
        """The command prefix that runs a command inside the namespace."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def run(self, cmd: list[str], *, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True,
                              env=env, timeout=timeout, check=False)

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix(), *cmd], **kwargs)

    def key_dirs(self) -> list[str]:
        try:
            return sorted(os.listdir(self.home))
        except FileNotFoundError:
            return []


@contextmanager
def private_bpffs() -> Iterator[Bpffs]:
    """A mount namespace with its own bpffs at /sys/fs/bpf (see module doc)."""
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep 86400"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        if not select.select([holder.stdout], [], [], 30)[0] or not holder.stdout.readline():
            err = holder.stderr.read().decode() if holder.stderr else ""
            raise RuntimeError(f"no private bpffs: {err[-500:]}")
        yield Bpffs(holder)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        for stream in (holder.stdout, holder.stderr):
            if stream:
                stream.close()
