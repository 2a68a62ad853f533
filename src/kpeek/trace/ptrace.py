"""A thin ctypes layer over ptrace(2): only the requests the tracer needs.

Syscall numbers and arguments come from PTRACE_GET_SYSCALL_INFO (Linux 5.3),
which is the same on every architecture, so no register layouts here.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os

from kpeek.errors import NotPermitted, NotSupported
from kpeek.records import record

PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GET_SYSCALL_INFO = 0x420E

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_EXITKILL = 0x100000  # the tracees die with the tracer, even on SIGKILL

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_EXIT = 6

SYSCALL_INFO_ENTRY = 1
SYSCALL_INFO_EXIT = 2

# waitpid: also children that are threads (clone without SIGCHLD)
WALL = getattr(os, "__WALL", 0x40000000)

OPTIONS = (
    PTRACE_O_TRACESYSGOOD
    | PTRACE_O_TRACEFORK
    | PTRACE_O_TRACEVFORK
    | PTRACE_O_TRACECLONE
    | PTRACE_O_TRACEEXEC
    | PTRACE_O_TRACEEXIT
    | PTRACE_O_EXITKILL
)


class _Entry(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class _Exit(ctypes.Structure):
    _fields_ = [("rval", ctypes.c_int64), ("is_error", ctypes.c_uint8)]


class _Union(ctypes.Union):
    _fields_ = [("entry", _Entry), ("exit", _Exit), ("pad", ctypes.c_uint8 * 64)]


class _SyscallInfo(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("u", _Union),
    ]


@record(frozen=True, slots=True)
class SyscallStop:
    """What PTRACE_GET_SYSCALL_INFO says at a syscall stop."""

    op: int  # SYSCALL_INFO_ENTRY or SYSCALL_INFO_EXIT (0 if neither)
    arch: int
    nr: int = -1
    args: tuple[int, ...] = ()
    rval: int = 0
    is_error: bool = False


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


class TraceeGone(Exception):
    """The tracee died (or was not stopped) when we asked it something: ESRCH."""


def ptrace(request: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    """Call ptrace(2). Raises TraceeGone on ESRCH and OSError on other errors."""
    ctypes.set_errno(0)
    result = _ptrace(request, pid, ctypes.c_void_p(addr), data if data else None)
    if result == -1:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise TraceeGone(pid)
        if err:
            raise OSError(err, os.strerror(err))
    return result


def traceme() -> None:
    """In a child about to exec: let the parent trace it. Raises NotPermitted."""
    try:
        ptrace(PTRACE_TRACEME, 0)
    except OSError as e:
        raise NotPermitted(
            f"ptrace refused ({e.strerror}): check kernel.yama.ptrace_scope or seccomp"
        ) from e


def set_options(pid: int, options: int = OPTIONS) -> None:
    ptrace(PTRACE_SETOPTIONS, pid, 0, options)


def resume(pid: int, signal: int = 0, request: int = PTRACE_SYSCALL) -> None:
    """Let a stopped tracee run to its next syscall stop; gone tracees are ignored."""
    with contextlib.suppress(TraceeGone):
        ptrace(request, pid, 0, signal)


def event_message(pid: int) -> int:
    """PTRACE_GETEVENTMSG: the new pid at a fork event, the status at an exit event."""
    value = ctypes.c_ulong(0)
    ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(value))
    return value.value


def is_group_stop(pid: int) -> bool:
    """True when a stop is a group-stop (PTRACE_GETSIGINFO fails with EINVAL)."""
    buf = ctypes.create_string_buffer(128)
    try:
        ptrace(PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(buf))
    except OSError as e:
        return e.errno == errno.EINVAL
    return False


def syscall_info(pid: int) -> SyscallStop:
    """PTRACE_GET_SYSCALL_INFO at a syscall stop. Raises NotSupported before Linux 5.3."""
    info = _SyscallInfo()
    try:
        ptrace(PTRACE_GET_SYSCALL_INFO, pid, ctypes.sizeof(info), ctypes.addressof(info))
    except OSError as e:
        if e.errno == errno.EIO:
            raise NotSupported("this kernel lacks PTRACE_GET_SYSCALL_INFO (Linux 5.3+)") from e
        raise
    if info.op == SYSCALL_INFO_ENTRY:
        return SyscallStop(
            info.op, info.arch, int(info.u.entry.nr), tuple(int(a) for a in info.u.entry.args)
        )
    if info.op == SYSCALL_INFO_EXIT:
        return SyscallStop(
            info.op, info.arch, rval=int(info.u.exit.rval), is_error=bool(info.u.exit.is_error)
        )
    return SyscallStop(info.op, info.arch)


def read_memory(pid: int, address: int, size: int) -> bytes:
    """Bytes of a stopped tracee's memory ("" when unreadable)."""
    if address == 0 or size <= 0:
        return b""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, address)
    except OSError:
        return b""
    finally:
        os.close(fd)


def read_string(pid: int, address: int, limit: int = 4096) -> bytes | None:
    """A NUL-terminated string from a tracee (None when unreadable), at most ``limit`` bytes."""
    data = b""
    chunk = 256
    while len(data) < limit:
        part = read_memory(pid, address + len(data), chunk)
        if not part:
            # The string may end near a page boundary: retry byte by byte.
            if chunk > 1:
                chunk = 1
                continue
            return data if data else None
        end = part.find(b"\0")
        if end >= 0:
            return data + part[:end]
        data += part
    return data
