"""Sources turn the kernel into a model Snapshot.

``take_snapshot("auto")`` uses BPF where it loads (more facts: struct file
identity, reference counts, blockers) and /proc otherwise. "memory" walks
kernel objects through the BPF memory reader, as kpeek does in a crash dump
(see memwalk).
"""

from __future__ import annotations

import dataclasses

from kpeek.errors import KpeekError, NotSupported, UsageError, os_reason
from kpeek.model import Snapshot

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

SOURCES = ("auto", "bpf", "procfs", "memory")
# stacks=BLOCKED: kernel stacks of tasks in D state only (the doctor's need:
# every other task's wait channel and system call say what it waits on).
BLOCKED = "blocked"
# What only the BPF source knows (see docs/bpf.md).
LOST_WITHOUT_BPF = (
    "struct file and task addresses, file reference counts, f_mode and lock blockers"
)


def take_snapshot(source: str = "auto", **kwargs: Any) -> Snapshot:
    """A snapshot from the named source; see procfs.take_snapshot for kwargs
    (and bpf.snapshot.take_snapshot for ``process_files``, which only it takes).

    With "auto", a BPF failure (not root, no BTF, a verifier that refuses)
    falls back to procfs; the reason and the facts lost are kept in
    Snapshot.notes. Every reference in it resolves (see consistent.py).
    """
    from kpeek.sources.consistent import make_consistent

    return make_consistent(_take(source, **kwargs))


def _take(source: str, **kwargs: Any) -> Snapshot:
    # Imported here, each only when used: loading a source costs time that
    # verbs which never take a snapshot (or use another source) should not pay.
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "memory":  # process rows: BPF and /proc read them with their snapshot,
        kwargs.pop("process_files", None)  # fdfacts.enrich reads them after for the others
    if source == "procfs":
        from kpeek.sources import procfs

        return procfs.take_snapshot(**kwargs)
    if source == "memory":
        from kpeek.sources import memwalk
        from kpeek.targets.live import open_live

        return memwalk.take_snapshot(open_live(), **kwargs)
    from kpeek.sources.bpf import snapshot as bpf

    try:
        return bpf.take_snapshot(**kwargs)
    except (KpeekError, OSError) as e:
        # OSError: an unusable cache folder or object file; procfs still works.
        if source == "bpf":
            if isinstance(e, OSError):
                raise NotSupported(f"BPF source not prepared: {os_reason(e)}") from None
            raise
        from kpeek.sources import procfs

        snap = procfs.take_snapshot(**kwargs)
        why = os_reason(e) if isinstance(e, OSError) else str(e)
        note = f"bpf source unavailable ({why}); used procfs, without {LOST_WITHOUT_BPF}"
        return dataclasses.replace(snap, notes=(*snap.notes, note))

