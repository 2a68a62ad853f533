"""Processes that /proc lists but BPF task iterators do not visit.

Some kernels hide a task from the iterators (on a sandboxed machine, pid 1,
its supervisor). Rather than leave a hole in the snapshot, such processes
are read from /proc, and each of their open files is matched with kcmp(2)
to the open file BPF saw in another process, so sharing stays exact.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import field

from kpeek.errors import KpeekError, NotPermitted
from kpeek.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kpeek.model import FileDescriptor, Inode, OpenFile, Task


def proc_pids() -> list[int]:
    """Thread-group ids /proc lists now."""
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def hidden_pids(candidates: Iterable[int], seen: set[int]) -> list[int]:
    """Those of ``candidates`` not in ``seen`` that still exist (an exited
    process is not hidden, just gone)."""
    return sorted(p for p in set(candidates) - seen if os.path.exists(f"/proc/{p}"))


@record
class Merged:
    """What /proc gave of the processes the iterators did not visit."""

    tasks: list[Task] = field(default_factory=list)
    fds: list[FileDescriptor] = field(default_factory=list)
    open_files: dict[str, OpenFile] = field(default_factory=dict)
    inodes: dict[str, Inode] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def from_procfs(
    hidden: list[int],
    bpf_fds: list[FileDescriptor],
    bpf_files: dict[str, OpenFile],
    **kwargs: bool,
) -> Merged:
    """Tasks and descriptors of ``hidden`` from /proc, their open files
    renamed to the BPF snapshot's ids where kcmp says they are the same.

    ``kwargs`` are the snapshot's threads/files/stacks/all_namespaces.
    """
    from kpeek.sources import procfs

    out = Merged()
    pids = ", ".join(map(str, hidden))
    try:
        try:
            snap = procfs.take_snapshot(hidden, **kwargs)
        except NotPermitted as e:  # descriptors refused even to root: tasks at least
            out.notes.append(f"pid {pids}: descriptors not readable ({e})")
            snap = procfs.take_snapshot(hidden, **{**kwargs, "files": False})
    except KpeekError as e:  # exited meanwhile
        out.notes.append(f"pid {pids}: not visible to BPF iterators ({e})")
        return out
    # inode -> BPF open file id -> one descriptor that holds it, for the
    # inodes the hidden processes hold (pid 1's few, not a whole system's)
    inodes = {f.inode for f in snap.open_files.values()}
    candidates = {i for i, f in bpf_files.items() if f.inode in inodes}
    by_inode: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for d in bpf_fds if candidates else ():
        if d.open_file in candidates:
            by_inode[bpf_files[d.open_file].inode].setdefault(d.open_file, (d.tgid, d.fd))
    renamed: dict[str, str] = {}
    for file_id, f in snap.open_files.items():
        holder = next(d for d in snap.fds if d.open_file == file_id)
        renamed[file_id] = _same_file(holder, by_inode.get(f.inode, {})) or file_id
        if renamed[file_id] == file_id:
            out.open_files[file_id] = f
    out.tasks = list(snap.tasks)
    if snap.fds:  # the file-table classes load only with file tables (not for ps)
        from kpeek.model import FileDescriptor

    out.fds = [
        FileDescriptor(d.tgid, d.fd, d.cloexec, renamed.get(d.open_file, d.open_file))
        for d in snap.fds
    ]
    out.inodes = dict(snap.inodes)
    out.notes[:0] = [f"pid {pids} read from /proc: not visible to BPF iterators"]
    out.notes += snap.notes
    return out


def _same_file(holder: FileDescriptor, candidates: dict[str, tuple[int, int]]) -> str | None:
    """The BPF open file id ``holder`` refers to, asked of kcmp; None if none."""
    from kpeek.sources.kcmp import KcmpUnavailable, compare_files  # ctypes: only here

    for file_id, (tgid, fd) in candidates.items():
        try:
            if compare_files(holder.tgid, holder.fd, tgid, fd) == 0:
                return file_id
        except (KcmpUnavailable, OSError):
            continue
    return None
