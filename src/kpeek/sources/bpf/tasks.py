"""Where each task_struct lives: one iter/task run lists them all."""

from __future__ import annotations

import struct

from kpeek.sources.bpf.loaded import bpf_iterator

_RECORD = struct.Struct("<QII")  # struct kpeek_task_record in reader.bpf.c


def task_addresses() -> dict[int, int]:
    """Map every live task's tid (global pid number) to its task_struct address.

    Threads included, and tasks hidden from the iterator (pid 1 on some
    sandboxes) when they are some task's parent. A task that exits during
    the walk may be missing.
    Raises NotPermitted (not root) or NotSupported (BPF cannot load).
    """
    out = bpf_iterator("reader", "task_addresses").run()
    return {tid: address for address, tid, _tgid in _RECORD.iter_unpack(out)}
