"""Where the running kernel keeps the fields of its sleeping locks.

The doctor reads mutexes, rw_semaphores and semaphores, their waiter
records and the inode around an i_rwsem (diagnose/kernlocks.py) at offsets
that differ between kernels. Looking them up by name in BTF from Python
means indexing every name of vmlinux's BTF first (0.3 to 0.8 s); the
``lock_layout`` program in snapshot.bpf.c has them as CO-RE relocations,
which libbpf resolved against the kernel's BTF when the object loaded, and
writes them out in one record. Offers the part of the BTF interface that
kernlocks.LockReader uses: ``lookup(type).offsetof(member)``.
"""

from __future__ import annotations

import os
import struct

from kpeek.errors import NotSupported
from kpeek.sources.bpf.loaded import bpf_iterator

# In the order of struct kpeek_lock_layout's offsets in snapshot.bpf.c.
LOCK_LAYOUT = (
    ("struct task_struct", "stack"),
    ("struct task_struct", "blocker"),
    ("struct task_struct", "thread.sp"),
    ("struct mutex", "wait_list"),
    ("struct rw_semaphore", "wait_list"),
    ("struct semaphore", "wait_list"),
    ("struct mutex_waiter", "list"),
    ("struct mutex_waiter", "task"),
    ("struct rwsem_waiter", "list"),
    ("struct rwsem_waiter", "task"),
    ("struct rwsem_waiter", "timeout"),
    ("struct semaphore_waiter", "list"),
    ("struct semaphore_waiter", "task"),
    ("struct rw_semaphore", "owner"),
    ("struct rw_semaphore", "count"),
    ("struct mutex", "owner"),
    ("struct semaphore", "count"),
    ("struct semaphore", "last_holder"),
    ("struct inode", "i_rwsem"),
    ("struct inode", "i_ino"),
    ("struct inode", "i_sb"),
    ("struct super_block", "s_dev"),
)
_RECORD = struct.Struct(f"<{len(LOCK_LAYOUT)}I")
_MISSING = 0xFFFFFFFF


class StructLayout:
    """The members of one struct that the kernel has, by member path."""

    def __init__(self, name: str, offsets: dict[str, int]) -> None:
        self.name = name
        self.offsets = offsets

    def offsetof(self, path: str) -> int:
        try:
            return self.offsets[path]
        except KeyError:
            raise KeyError(f"{self.name} has no member {path} on this kernel") from None


class LockLayout:
    """``lookup("struct mutex").offsetof("wait_list")``, as Btf answers it."""

    def __init__(self, offsets: dict[tuple[str, str], int]) -> None:
        self._structs: dict[str, StructLayout] = {}
        for (name, path), off in offsets.items():
            self._structs.setdefault(name, StructLayout(name, {})).offsets[path] = off

    def lookup(self, name: str) -> StructLayout:
        return self._structs.get(name) or StructLayout(name, {})


def lock_layout() -> LockLayout:
    """The running kernel's lock layout. Raises NotPermitted or NotSupported
    as every BPF source does."""
    out = bpf_iterator("snapshot", "lock_layout", tid=os.getpid()).run()
    if len(out) < _RECORD.size:
        raise NotSupported("the lock_layout BPF program wrote no record")
    values = _RECORD.unpack_from(out)
    return LockLayout({key: off for key, off in zip(LOCK_LAYOUT, values, strict=True)
                       if off != _MISSING})
