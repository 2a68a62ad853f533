"""A large family of sleeping processes with real descriptors, for benchmarks.

Each child holds ``fds_per_process`` descriptors: inherited shared ones (a
file opened before fork, both ends of a pipe), its own file opens, a
socketpair, and pipes. The family lives in its own session and is killed and
reaped by ``close()``.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from contextlib import suppress


class Family:
    def __init__(self, processes: int, fds_per_process: int) -> None:
        self.pids: list[int] = []
        self._dir = tempfile.TemporaryDirectory(prefix="kpeek-bench-")
        shared_path = os.path.join(self._dir.name, "shared")
        shared = os.open(shared_path, os.O_RDWR | os.O_CREAT, 0o600)
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        for _ in range(processes):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                # 6 inherited: stdin/out/err, the shared file, both pipe ends
                self._child(fds_per_process - 6, shared_path, ready_w)
            self.pids.append(pid)
        os.close(ready_w)
        # Each child writes one byte when its table is built.
        got = 0
        while got < processes:
            chunk = os.read(ready_r, 65536)
            if not chunk:
                break
            got += len(chunk)
        os.close(ready_r)
        for fd in (shared, r, w):
            os.close(fd)
        self.descriptors = sum(len(os.listdir(f"/proc/{p}/fd")) for p in self.pids)

    def _child(self, own: int, shared_path: str, ready: int) -> None:
        try:
            # Let go of the caller's stdout/stderr: a pipe held open by
            # thousands of sleepers would keep whoever reads it waiting.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
            keep = []  # descriptors must stay referenced until the child dies
            k = 0
            while len(keep) < own:
                kind = k % 3
                k += 1
                if kind == 0:
                    keep.append(os.open(shared_path, os.O_RDONLY))
                elif kind == 1:
                    keep.extend(socket.socketpair())
                else:
                    keep.extend(os.pipe())
            os.write(ready, b".")
            os.close(ready)
            signal.pause()
        finally:
            os._exit(0)

    def close(self) -> None:
        for pid in self.pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._dir.cleanup()


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
