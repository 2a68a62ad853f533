"""What kind of file a descriptor refers to, from its inode's format bits and
its path, in the words of the three-tables diagrams: the same for every
source (procfs, BPF, memory walks), and light to import (the BPF source's
kpeek files PID needs nothing else of /proc's readers)."""

from __future__ import annotations

import stat

O_CLOEXEC = 0o2000000


def file_type(mode: int, path: str) -> str:
    """What a descriptor refers to, in the words of the three-tables diagrams."""
    if path.startswith("anon_inode:"):
        return "anon_inode"
    if stat.S_ISREG(mode):
        return "memfd" if path.startswith("/memfd:") else "regular"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "pipe" if path.startswith("pipe:[") else "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    if stat.S_ISLNK(mode):
        return "symlink"
    if path.startswith(("pipe:[", "socket:[")):
        return path.split(":", 1)[0]
    return "unknown"
