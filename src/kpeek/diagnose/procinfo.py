"""Per-task facts the doctor needs beyond the snapshot: the system call a
task sleeps in (and on which file), and how long it has slept.

All reads are of /proc and never touch the files themselves (a stat(2) of
a file on a hung FUSE mount would hang the doctor too).
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time

from kpeek.diagnose.fdindex import index_of
from kpeek.model import Snapshot, Task
from kpeek.records import record
from kpeek.sources.proc_tasks import Vanished, parse_stat, read_bytes
from kpeek.textsafe import decode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    N = TypeVar("N")

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


# The system calls whose sleep the doctor explains, by number.
SYSCALL_NAMES = {
    "x86_64": {0: "read", 1: "write", 7: "poll", 17: "pread64", 18: "pwrite64", 19: "readv",
               20: "writev", 23: "select", 34: "pause", 35: "nanosleep", 43: "accept",
               42: "connect", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg",
               56: "clone", 57: "fork", 58: "vfork", 61: "wait4", 202: "futex",
               230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid", 270: "pselect6",
               271: "ppoll", 275: "splice", 281: "epoll_pwait", 288: "accept4",
               299: "recvmmsg", 307: "sendmmsg", 435: "clone3", 441: "epoll_pwait2",
               449: "futex_waitv", 2: "open", 257: "openat", 130: "rt_sigsuspend",
               128: "rt_sigtimedwait", 295: "preadv", 296: "pwritev", 327: "preadv2",
               328: "pwritev2", 276: "tee", 40: "sendfile", 326: "copy_file_range",
               242: "mq_timedsend", 243: "mq_timedreceive", 65: "semop", 220: "semtimedop",
               69: "msgsnd", 70: "msgrcv"},
    "aarch64": {63: "read", 64: "write", 67: "pread64", 68: "pwrite64", 65: "readv",
                66: "writev", 72: "pselect6", 73: "ppoll", 101: "nanosleep", 202: "accept",
                203: "connect", 206: "sendto", 207: "recvfrom", 211: "sendmsg",
                212: "recvmsg", 220: "clone", 260: "wait4", 98: "futex",
                115: "clock_nanosleep", 95: "waitid", 76: "splice", 22: "epoll_pwait",
                242: "accept4", 243: "recvmmsg", 269: "sendmmsg", 435: "clone3",
                441: "epoll_pwait2", 449: "futex_waitv", 56: "openat", 133: "rt_sigsuspend",
                137: "rt_sigtimedwait", 69: "preadv", 70: "pwritev", 286: "preadv2",
                287: "pwritev2", 77: "tee", 71: "sendfile", 285: "copy_file_range",
                182: "mq_timedsend", 183: "mq_timedreceive", 193: "semop", 192: "semtimedop",
                189: "msgsnd", 188: "msgrcv"},
}


@record(frozen=True, slots=True)
class SyscallTarget:
    """What a sleeping task's current system call works on."""

    name: str
    fd: int | None = None
    path: str | None = None  # absolute path, as the task named it


def _machine() -> str:
    m = platform.machine()
    return "aarch64" if m in ("arm64", "aarch64") else m


# One read of /proc/.../syscall per task and diagnosis: several finders ask.
_syscalls: dict[tuple[int, int], tuple[int, list[int]] | None] = {}


def forget_syscalls() -> None:
    """Start a new diagnosis: system calls read before are stale."""
    _syscalls.clear()


def read_syscall(task: Task) -> tuple[int, list[int]] | None:
    """(number, arguments) of the system call the task sleeps in: as the
    snapshot read it (the BPF source, from the saved user registers), else
    from /proc/TGID/task/TID/syscall; None when running, outside a system
    call, gone, or not readable."""
    if task.syscall is not None:
        return (task.syscall[0], list(task.syscall[1:7])) if task.syscall[0] >= 0 else None
    key = (task.tgid, task.pid)
    if key not in _syscalls:
        _syscalls[key] = _read_syscall(task)
    return _syscalls[key]


def _read_syscall(task: Task) -> tuple[int, list[int]] | None:
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


def s32(value: int) -> int:
    """A system call argument register read as a C int."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def syscall_name(task: Task) -> tuple[str, list[int]] | None:
    """(name, arguments) of the system call a task sleeps in, for the calls
    the doctor knows (see SYSCALL_NAMES); the number as text otherwise."""
    call = read_syscall(task)
    if call is None:
        return None
    nr, args = call
    return SYSCALL_NAMES.get(_machine(), {}).get(nr, str(nr)), args


def read_user(task: Task, address: int, size: int) -> bytes | None:
    """``size`` bytes of the task's own memory at ``address`` (through
    /proc/PID/mem: a user process's memory, never the kernel's)."""
    if not address:
        return None
    try:
        fd = os.open(f"/proc/{task.tgid}/task/{task.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.pread(fd, size, address)
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw if len(raw) == size else None


def _read_user_string(task: Task, address: int, limit: int = 4096) -> str | None:
    raw = read_user(task, address, limit)
    if raw is None:  # a string near the end of a mapping: read less
        raw = read_user(task, address, 256)
    if raw is None:
        return None
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


def open_file_of(snapshot: Snapshot, tgid: int, fd: int) -> str | None:
    """The OpenFile id behind descriptor ``fd`` of ``tgid`` in the snapshot."""
    return index_of(snapshot).file_id(tgid, fd)


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

    ``se.exec_start`` is the scheduler's task clock (ms) when the task last
    ran (for a sleeper, about when it went to sleep). That clock is not
    CLOCK_MONOTONIC, and it is kept per CPU: it leaves out each CPU's own
    irq and steal time, so two CPUs of a VM can disagree by hundreds of ms.
    So it is calibrated per CPU: this thread runs once on each CPU it may
    use, where its own exec_start is that CPU's clock "now", and a task's
    exec_start is read against the clock of the CPU it last ran on.
    """

    def __init__(self) -> None:
        self.offset_ms: dict[int, float] = {}
        tid = threading.get_native_id()
        try:
            allowed = os.sched_getaffinity(0)
        except OSError:
            allowed = set()
        try:
            for cpu in sorted(allowed):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, {cpu})
                    time.sleep(0.0005)  # be switched in there: exec_start is set then
                    own = _exec_start(f"/proc/self/task/{tid}/sched")
                    if own is not None:
                        mono = time.clock_gettime(time.CLOCK_MONOTONIC) * 1000.0
                        self.offset_ms[cpu] = mono - own
        finally:
            if allowed:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, allowed)

    def asleep_seconds(self, task: Task) -> float | None:
        """Seconds since the task last ran; None when unknown."""
        if task.exec_start is not None and task.cpu is not None:  # read with the task (BPF)
            start: float | None = task.exec_start / 1e6
            cpu: int | None = task.cpu
        else:
            start = _exec_start(f"/proc/{task.tgid}/task/{task.pid}/sched")
            cpu = _last_cpu(f"/proc/{task.tgid}/task/{task.pid}/stat")
        offset = self.offset_ms.get(cpu) if cpu is not None else None
        if offset is None and self.offset_ms:
            # A CPU this process may not use: the nearest guess is the mean.
            offset = sum(self.offset_ms.values()) / len(self.offset_ms)
        if start is None or offset is None:
            return None
        now = time.clock_gettime(time.CLOCK_MONOTONIC) * 1000.0 - offset
        return max(0.0, (now - start) / 1000.0)


def _last_cpu(stat_path: str) -> int | None:
    """Field 39 of /proc/PID/stat: the CPU the task last ran on."""
    try:
        _, fields = parse_stat(read_bytes(stat_path))
        return int(fields[36])  # fields start at field 3, the state
    except (Vanished, OSError, ValueError, IndexError):
        return None


def _exec_start(path: str) -> float | None:
    return proc_field(path, b"se.exec_start", float)


def proc_field(path: str, key: bytes, convert: Callable[[bytes], N]) -> N | None:
    """The value of the first ``key: value`` line of a /proc file (fdinfo,
    sched...), converted; None when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return convert(line.split(b":", 1)[1].strip())
    except (OSError, ValueError):
        return None
    return None
