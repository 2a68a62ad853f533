"""Open-file flags (f_flags) by name, as open(2) spells them."""

from __future__ import annotations

import functools
import os

ACCESS_MODES = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}

# 64-bit userspace defines O_LARGEFILE as 0, but the kernel sets its own bit
# in f_flags of every file opened by a 64-bit process.
_KERNEL_O_LARGEFILE = {"x86_64": 0o100000, "aarch64": 0o400000}.get(os.uname().machine, 0)

# Order matters where bits overlap: O_SYNC includes O_DSYNC's bit and
# O_TMPFILE includes O_DIRECTORY's.
_FLAG_NAMES: tuple[tuple[int, str], ...] = tuple(
    (bit, n)
    for n, bit in (
        (n, getattr(os, n, 0) or (_KERNEL_O_LARGEFILE if n == "O_LARGEFILE" else 0))
        for n in (
            "O_APPEND",
            "O_NONBLOCK",
            "O_SYNC",
            "O_DSYNC",
            "O_ASYNC",
            "O_DIRECT",
            "O_LARGEFILE",
            "O_TMPFILE",
            "O_DIRECTORY",
            "O_NOFOLLOW",
            "O_NOATIME",
            "O_PATH",
        )
    )
    if bit
)


def access_mode(flags: int) -> str:
    return ACCESS_MODES.get(flags & os.O_ACCMODE, "O_ACCMODE?")


def flag_names(flags: int) -> list[str]:
    """Names of the status flags set in ``flags`` (access mode excluded)."""
    return list(_flag_names(flags))  # a fresh list: callers may change it


# A system has a few dozen distinct flag words among 50,000 descriptors.
@functools.lru_cache(maxsize=1024)
def _flag_names(flags: int) -> tuple[str, ...]:
    names = []
    seen = 0
    for bit, n in _FLAG_NAMES:
        if flags & bit == bit and seen & bit != bit:
            names.append(n)
            seen |= bit
    rest = flags & ~os.O_ACCMODE & ~seen
    if rest:
        names.append(f"0{rest:o}")
    return tuple(names)
