"""The syscalls that change descriptor tables, by number, and how to show them.

Only these are recorded; everything else runs untouched. Numbers are per
architecture (PTRACE_GET_SYSCALL_INFO tells the syscall's AUDIT_ARCH; a
32-bit compat syscall on a 64-bit kernel is not decoded).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable

from kpeek.trace.ptrace import read_memory, read_string

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7

_X86_64 = {
    "read": 0, "write": 1, "open": 2, "close": 3, "lseek": 8, "ioctl": 16,
    "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "pipe": 22, "dup": 32,
    "dup2": 33, "sendfile": 40, "socket": 41, "accept": 43, "socketpair": 53, "clone": 56,
    "fork": 57, "vfork": 58, "execve": 59, "fcntl": 72, "creat": 85, "epoll_create": 213,
    "inotify_init": 253, "openat": 257, "splice": 275, "signalfd": 282,
    "timerfd_create": 283, "eventfd": 284, "accept4": 288, "signalfd4": 289,
    "eventfd2": 290, "epoll_create1": 291, "dup3": 292, "pipe2": 293, "inotify_init1": 294,
    "fanotify_init": 300, "open_by_handle_at": 304, "memfd_create": 319, "execveat": 322,
    "userfaultfd": 323, "copy_file_range": 326, "pidfd_open": 434, "clone3": 435,
    "close_range": 436, "openat2": 437, "pidfd_getfd": 438,
}
_AARCH64 = {
    "eventfd2": 19, "epoll_create1": 20, "dup": 23, "dup3": 24, "fcntl": 25,
    "inotify_init1": 26, "ioctl": 29, "openat": 56, "close": 57, "pipe2": 59, "lseek": 62,
    "read": 63, "write": 64, "readv": 65, "writev": 66, "pread64": 67, "pwrite64": 68,
    "sendfile": 71, "signalfd4": 74, "splice": 76, "timerfd_create": 85, "socket": 198,
    "socketpair": 199, "accept": 202, "clone": 220, "execve": 221, "accept4": 242,
    "fanotify_init": 262, "open_by_handle_at": 265, "memfd_create": 279, "execveat": 281,
    "userfaultfd": 282, "copy_file_range": 285, "pidfd_open": 434, "clone3": 435,
    "close_range": 436, "openat2": 437, "pidfd_getfd": 438,
}
NUMBERS = {AUDIT_ARCH_X86_64: _X86_64, AUDIT_ARCH_AARCH64: _AARCH64}
NAMES = {arch: {nr: name for name, nr in table.items()} for arch, table in NUMBERS.items()}

# Syscalls whose success changes a descriptor table (fork family: see tracer).
TABLE_CHANGING = frozenset({
    "open", "openat", "openat2", "creat", "open_by_handle_at", "close", "close_range",
    "dup", "dup2", "dup3", "pipe", "pipe2", "socket", "socketpair", "accept", "accept4",
    "execve", "execveat", "eventfd", "eventfd2", "epoll_create", "epoll_create1",
    "memfd_create", "signalfd", "signalfd4", "timerfd_create", "inotify_init",
    "inotify_init1", "fanotify_init", "userfaultfd", "pidfd_open", "pidfd_getfd",
})
FORKS = frozenset({"fork", "vfork", "clone", "clone3"})
# Change only the open file table (offsets): recorded with --io.
OFFSET_CHANGING = frozenset({
    "read", "write", "readv", "writev", "sendfile", "splice", "copy_file_range",
})

F_DUPFD, F_SETFD, F_SETFL, F_DUPFD_CLOEXEC = 0, 2, 4, 1030
FIONCLEX, FIOCLEX = 0x5450, 0x5451
_FCNTL_NAMES = {0: "F_DUPFD", 1: "F_GETFD", 2: "F_SETFD", 3: "F_GETFL", 4: "F_SETFL",
                1030: "F_DUPFD_CLOEXEC"}
AT_FDCWD = -100
CLONE_THREAD = 0x10000
CLONE_FILES = 0x400
CLONE_VM = 0x100
CLONE_VFORK = 0x4000

_OPEN_FLAGS = [
    (getattr(os, n, 0), n) for n in (
        "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC",
        "O_DIRECT", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_SYNC", "O_PATH",
        "O_TMPFILE",
    )
]


def signed(value: int, bits: int = 64) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def is_recorded(name: str, args: tuple[int, ...], io: bool = False) -> bool:
    """Whether a successful ``name(args)`` changes what the diagram shows."""
    if name in TABLE_CHANGING or (io and name in OFFSET_CHANGING):
        return True
    if name == "lseek":  # lseek(fd, 0, SEEK_CUR) only asks where the offset is
        return not (args[1] == 0 and args[2] == 1)
    if name == "fcntl":
        return signed(args[1], 32) in (F_DUPFD, F_SETFD, F_SETFL, F_DUPFD_CLOEXEC)
    if name == "ioctl":
        return args[1] & 0xFFFFFFFF in (FIOCLEX, FIONCLEX)
    return False


def open_flags(flags: int) -> str:
    acc = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}
    names = [acc.get(flags & os.O_ACCMODE, "O_ACCMODE")]
    seen = flags & os.O_ACCMODE
    for bit, name in _OPEN_FLAGS:
        if bit and flags & bit == bit and seen & bit != bit:
            names.append(name)
            seen |= bit
    if flags & ~seen:
        names.append(f"0{flags & ~seen:o}")
    return "|".join(names)


def _fd(value: int) -> str:
    v = signed(value, 32)
    return "AT_FDCWD" if v == AT_FDCWD else str(v)


def _quote(raw: bytes | None) -> str:
    if raw is None:
        return "?"
    return '"' + raw.decode("utf-8", "surrogateescape").replace('"', '\\"') + '"'


def _argv(pid: int, address: int, limit: int = 32) -> str:
    words: list[str] = []
    for i in range(limit):
        raw = read_memory(pid, address + 8 * i, 8)
        if len(raw) < 8:
            break
        (ptr,) = struct.unpack("<Q" if sys.byteorder == "little" else ">Q", raw)
        if ptr == 0:
            return "[" + ", ".join(words) + "]"
        words.append(_quote(read_string(pid, ptr, 1024)))
    return "[" + ", ".join([*words, "..."]) + "]"


def _clone_flags(pid: int, name: str, args: tuple[int, ...]) -> int:
    if name == "clone3":
        raw = read_memory(pid, args[0], 8)
        return int.from_bytes(raw, sys.byteorder) if len(raw) == 8 else 0
    if name == "clone":
        return args[0]
    return CLONE_VM | CLONE_VFORK if name == "vfork" else 0


def clone_flags(pid: int, name: str, args: tuple[int, ...]) -> int:
    """The clone flags of a fork-family syscall (0 for fork)."""
    return _clone_flags(pid, name, args)


_Formatter = Callable[[int, tuple[int, ...]], list[str]]


_DOMAINS = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000


def _domain(value: int) -> str:
    return _DOMAINS.get(value & 0xFFFFFFFF, str(value))


def _socket_type(value: int) -> str:
    names = [_SOCK_TYPES.get(value & 0xF, str(value & 0xF))]
    if value & SOCK_NONBLOCK:
        names.append("SOCK_NONBLOCK")
    if value & SOCK_CLOEXEC:
        names.append("SOCK_CLOEXEC")
    return "|".join(names)


def _open_how(pid: int, address: int) -> str:
    raw = read_memory(pid, address, 24)
    if len(raw) < 24:
        return "?"
    flags, mode, resolve = struct.unpack("=QQQ", raw)
    return f"{{flags={open_flags(flags)}, mode=0{mode:o}, resolve={resolve:#x}}}"


_ENTRY: dict[str, _Formatter] = {
    "open": lambda p, a: [_quote(read_string(p, a[0])), open_flags(a[1]), f"0{a[2]:o}"],
    "openat": lambda p, a: [_fd(a[0]), _quote(read_string(p, a[1])), open_flags(a[2]),
                            f"0{a[3]:o}"],
    "openat2": lambda p, a: [_fd(a[0]), _quote(read_string(p, a[1])), _open_how(p, a[2])],
    "creat": lambda p, a: [_quote(read_string(p, a[0])), f"0{a[1]:o}"],
    "close": lambda p, a: [_fd(a[0])],
    "close_range": lambda p, a: [str(signed(a[0], 32) & 0xFFFFFFFF),
                                 str(a[1] & 0xFFFFFFFF), hex(a[2])],
    "dup": lambda p, a: [_fd(a[0])],
    "dup2": lambda p, a: [_fd(a[0]), _fd(a[1])],
    "dup3": lambda p, a: [_fd(a[0]), _fd(a[1]), open_flags(a[2]).replace("O_RDONLY|", "")],
    "socket": lambda p, a: [_domain(a[0]), _socket_type(a[1]), str(a[2])],
    "execve": lambda p, a: [_quote(read_string(p, a[0])), _argv(p, a[1])],
    "execveat": lambda p, a: [_fd(a[0]), _quote(read_string(p, a[1])), _argv(p, a[2])],
    "fcntl": lambda p, a: [_fd(a[0]), _FCNTL_NAMES.get(signed(a[1], 32), str(a[1])),
                           str(signed(a[2]))],
    "ioctl": lambda p, a: [_fd(a[0]), {FIOCLEX: "FIOCLEX", FIONCLEX: "FIONCLEX"}.get(
        a[1] & 0xFFFFFFFF, hex(a[1]))],
    "lseek": lambda p, a: [_fd(a[0]), str(signed(a[1])),
                           {0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END"}.get(a[2], str(a[2]))],
    "memfd_create": lambda p, a: [_quote(read_string(p, a[0])), hex(a[1])],
    "pipe": lambda p, a: ["fds"],
    "pipe2": lambda p, a: ["fds", open_flags(a[1]).replace("O_RDONLY|", "").replace(
        "O_RDONLY", "0")],
    "socketpair": lambda p, a: [_domain(a[0]), _socket_type(a[1]), str(a[2]), "fds"],
}
for _name in ("read", "write", "readv", "writev"):
    _ENTRY[_name] = lambda p, a: [_fd(a[0]), "...", str(a[2])]


def describe_entry(pid: int, name: str, args: tuple[int, ...]) -> list[str]:
    """The arguments of ``name`` as strace would print them, read at syscall entry."""
    formatter = _ENTRY.get(name)
    if formatter is not None:
        try:
            return formatter(pid, args)
        except (IndexError, ValueError):
            pass
    return [hex(a) for a in args[:3]]


def describe_exit(pid: int, name: str, args: tuple[int, ...], result: int) -> str | None:
    """Output arguments known only at exit: the two fds of pipe() and socketpair()."""
    address = {"pipe": args[0], "pipe2": args[0], "socketpair": args[3]}.get(name)
    if address is None or result < 0:
        return None
    raw = read_memory(pid, address, 8)
    if len(raw) < 8:
        return None
    a, b = struct.unpack("=ii", raw)
    return f"[{a}, {b}]"
