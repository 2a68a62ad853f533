"""Per-task facts the doctor needs beyond the snapshot: the system call a
task sleeps in (and on which file), and how long it has slept.

All reads are of /proc and never touch the files themselves (a stat(2) of
a file on a hung FUSE mount would hang the doctor too).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import weakref
from dataclasses import dataclass

from kpeek.model import Snapshot, Task
from kpeek.textsafe import decode

AT_FDCWD = -100

# System calls whose first argument is a file descriptor the task works on,
# and those whose first (or, for *at, second) argument is a path.
_FD_SYSCALLS = {
    "x86_64": {0: "read", 1: "write", 17: "pread64", 18: "pwrite64", 19: "readv",
               20: "writev", 72: "fcntl", 73: "flock", 74: "fsync", 75: "fdatasync",
               77: "ftruncate", 285: "fallocate", 295: "preadv", 296: "pwritev",
               327: "preadv2", 328: "pwritev2", 275: "splice", 217: "getdents64"},
    "aarch64": {63: "read", 64: "write", 67: "pread64", 68: "pwrite64", 65: "readv",
                66: "writev", 25: "fcntl", 32: "flock", 82: "fsync", 83: "fdatasync",
                46: "ftruncate", 47: "fallocate", 69: "preadv", 70: "pwritev",
                286: "preadv2", 287: "pwritev2", 76: "splice", 61: "getdents64"},
}
_PATH_SYSCALLS = {
    "x86_64": {76: ("truncate", 0), 2: ("open", 0), 257: ("openat", 1), 437: ("openat2", 1),
               87: ("unlink", 0), 263: ("unlinkat", 1), 82: ("rename", 0), 4: ("stat", 0)},
    "aarch64": {45: ("truncate", 0), 56: ("openat", 1), 437: ("openat2", 1),
                35: ("unlinkat", 1)},
}


@dataclass(frozen=True, slots=True)
class SyscallTarget:
    """What a sleeping task's current system call works on."""

    name: str
    fd: int | None = None
    path: str | None = None  # absolute path, as the task named it


def _machine() -> str:
    m = platform.machine()
    return "aarch64" if m in ("arm64", "aarch64") else m


def read_syscall(task: Task) -> tuple[int, list[int]] | None:
    """(number, arguments) from /proc/TGID/task/TID/syscall; None when running,
    outside a system call, gone, or not readable."""
    try:
        with open(f"/proc/{task.tgid}/task/{task.pid}/syscall", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    if not fields or fields[0] in (b"running", b"-1"):
        return None
    try:
        return int(fields[0]), [int(x, 16) for x in fields[1:7]]
    except ValueError:
        return None


def _read_user_string(task: Task, address: int, limit: int = 4096) -> str | None:
    try:
        fd = os.open(f"/proc/{task.tgid}/task/{task.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.pread(fd, limit, address)
    except OSError:
        return None
    finally:
        os.close(fd)
    end = raw.find(b"\0")
    return decode(raw[:end]) if end >= 0 else None


def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def syscall_target(task: Task) -> SyscallTarget | None:
    """The file a sleeping task's system call is about, when /proc tells us.

    A relative path is made absolute against the task's cwd (or, for *at
    calls, the directory fd). Returns None when unknown.
    """
    call = read_syscall(task)
    if call is None:
        return None
    nr, args = call
    machine = _machine()
    fd_calls = _FD_SYSCALLS.get(machine, {})
    if nr in fd_calls and args:
        return SyscallTarget(fd_calls[nr], fd=_signed(args[0]) & 0xFFFFFFFF)
    path_calls = _PATH_SYSCALLS.get(machine, {})
    if nr in path_calls:
        name, index = path_calls[nr]
        if index >= len(args):
            return SyscallTarget(name)
        path = _read_user_string(task, args[index])
        if path is None:
            return SyscallTarget(name)
        if not path.startswith("/"):
            base = f"/proc/{task.tgid}/task/{task.pid}/cwd"
            dirfd = _signed(args[0]) if index == 1 else AT_FDCWD
            if index == 1 and (dirfd & 0xFFFFFFFF) != (AT_FDCWD & 0xFFFFFFFF):
                base = f"/proc/{task.tgid}/fd/{dirfd & 0xFFFFFFFF}"
            with contextlib.suppress(OSError):
                path = os.path.join(decode(os.readlink(base.encode())), path)
        return SyscallTarget(name, path=os.path.normpath(path))
    return SyscallTarget(str(nr))


_fd_index: tuple[weakref.ref, dict[tuple[int, int], str]] | None = None


def open_file_of(snapshot: Snapshot, tgid: int, fd: int) -> str | None:
    """The OpenFile id behind descriptor ``fd`` of ``tgid`` in the snapshot."""
    global _fd_index
    if _fd_index is None or _fd_index[0]() is not snapshot:  # one snapshot indexed at a time
        _fd_index = (weakref.ref(snapshot), {(d.tgid, d.fd): d.open_file for d in snapshot.fds})
    return _fd_index[1].get((tgid, fd))


def inode_of_target(snapshot: Snapshot, task: Task, target: SyscallTarget) -> str | None:
    """The Inode id the task's system call works on, matched in the snapshot
    (by descriptor, or by path against open files' paths)."""
    if target.fd is not None:
        file_id = open_file_of(snapshot, task.tgid, target.fd)
        if file_id and file_id in snapshot.open_files:
            return snapshot.open_files[file_id].inode
    if target.path is not None:
        for f in snapshot.open_files.values():
            if f.path == target.path:
                return f.inode
    return None


class SchedClock:
    """How long a task has been off the CPU, from /proc/PID/sched.

    ``se.exec_start`` is the scheduler clock (ms) when the task last ran
    (updated as it ran, so for a sleeper it is about when it went to
    sleep). The scheduler clock is not CLOCK_MONOTONIC, so it is calibrated
    against this process's own exec_start, which is "now" while we run.
    """

    def __init__(self) -> None:
        own = _exec_start(f"/proc/{os.getpid()}/task/{os.getpid()}/sched")
        mono = time.clock_gettime(time.CLOCK_MONOTONIC) * 1000.0
        self.offset_ms = (mono - own) if own is not None else None

    def now_ms(self) -> float | None:
        if self.offset_ms is None:
            return None
        return time.clock_gettime(time.CLOCK_MONOTONIC) * 1000.0 - self.offset_ms

    def asleep_seconds(self, task: Task) -> float | None:
        """Seconds since the task last ran; None when unknown."""
        start = _exec_start(f"/proc/{task.tgid}/task/{task.pid}/sched")
        now = self.now_ms()
        if start is None or now is None:
            return None
        return max(0.0, (now - start) / 1000.0)


def _exec_start(path: str) -> float | None:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"se.exec_start"):
                    return float(line.split(b":", 1)[1])
    except (OSError, ValueError):
        return None
    return None
