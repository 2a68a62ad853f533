"""Sources turn the kernel into a model Snapshot.

``take_snapshot("auto")`` uses BPF where it loads (more facts: struct file
identity, reference counts, blockers) and /proc otherwise.
"""

from __future__ import annotations

from typing import Any

from kpeek.errors import KpeekError, UsageError
from kpeek.model import Snapshot

SOURCES = ("auto", "bpf", "procfs")


def take_snapshot(source: str = "auto", **kwargs: Any) -> Snapshot:
    """A snapshot from the named source; see procfs.take_snapshot for kwargs.

    With "auto", a BPF failure (not root, no BTF, no clang) falls back to
    procfs and the reason is kept in Snapshot.notes.
    """
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source in ("auto", "bpf"):
        try:
            from kpeek.sources.bpf.snapshot import take_snapshot as bpf_snapshot
        except ImportError as e:
            if source == "bpf":
                raise UsageError("the bpf source is not available in this build") from e
        else:
            try:
                return bpf_snapshot(**kwargs)
            except KpeekError as e:
                if source == "bpf":
                    raise
                fallback_note = f"bpf source unavailable ({e}); used procfs"
                from kpeek.sources import procfs

                snap = procfs.take_snapshot(**kwargs)
                return _noted(snap, fallback_note)
    from kpeek.sources import procfs

    return procfs.take_snapshot(**kwargs)


def _noted(snap: Snapshot, note: str) -> Snapshot:
    import dataclasses

    return dataclasses.replace(snap, notes=(*snap.notes, note))
