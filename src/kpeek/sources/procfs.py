"""Snapshot of the live system from /proc, /sys and kcmp(2).

Needs no privilege beyond what /proc grants: as a normal user it sees its
own processes' files and says what it could not see (Snapshot.notes).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable

from kpeek.errors import NotPermitted, UsageError
from kpeek.model import Snapshot, Task
from kpeek.sources.proc_tasks import Vanished, iter_tasks, list_pids, ns_ppid, nspids_of

# The descriptor side (kcmp, mounts, statx, the file-table classes) is
# imported where it is used: a snapshot of tasks alone (ps) starts faster.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kpeek.filemodel import Mapped, ProcessFileTable
    from kpeek.forked import InChild
    from kpeek.model import FileDescriptor, Inode, OpenFile
    from kpeek.sources.proc_files import RawDescriptor

SOURCE = "procfs"


def take_snapshot(
    pids: Iterable[int] | None = None,
    *,
    threads: bool = True,
    files: bool = True,
    stacks: bool | str = False,
    all_namespaces: bool = False,
    process_files: bool = False,
) -> Snapshot:
    """Tasks (and, with ``files``, their descriptor tables) of ``pids`` or of all.

    ``process_files``: also lsof's cwd/rtd/txt/mem rows (Snapshot.process_files),
    read beside the walk when there are many processes (else fdfacts.enrich
    reads them after, as it does without this).

    ``pids`` are thread-group ids. A pid that names no process raises
    UsageError; asking for another user's files as non-root raises
    NotPermitted. Tasks and fds that vanish while being read are skipped and
    counted in ``Snapshot.vanished``.
    """
    explicit = pids is not None
    tgids = sorted(set(pids)) if pids is not None else list_pids()
    if explicit:
        missing = [p for p in tgids if not os.path.exists(f"/proc/{p}")]
        if missing:
            raise UsageError(f"no such process: {', '.join(map(str, missing))}")

    rows = _rows_beside(tgids) if process_files and files and _many(tgids) else None
    try:
        snap = _walk(tgids, explicit, threads, files, stacks, all_namespaces)
    except BaseException:
        if rows is not None:
            rows.cancel()
        raise
    table = _row_table(rows.result()) if rows is not None else None
    return snap if table is None else snap.derive(process_files=table)


def _many(tgids: list[int]) -> bool:
    """More processes than enrich reads the rows of as quickly after the walk."""
    from kpeek.sources.fdfacts import FEW

    return len(tgids) > FEW


def _rows_beside(tgids: list[int]) -> InChild:
    """The process rows of ``tgids`` read in a child while this process walks
    the descriptors: most of their cost is the kernel formatting
    /proc/PID/maps (some 80 MB for 5,000 processes)."""
    from kpeek.forked import InChild
    from kpeek.sources import fdfacts

    def read() -> tuple[list[list[Mapped]], dict[int, tuple[list[tuple[str, str, str]], int]]]:
        parsed: dict = {}  # forks of one program share one list (process_parts)
        lists: dict[int, tuple[int, list[Mapped]]] = {}  # id -> (index, the list)
        rows = {}
        for tgid in tgids:
            own, mapped = fdfacts.process_parts(tgid, parsed)
            index = lists.setdefault(id(mapped), (len(lists), mapped))[0]
            rows[tgid] = ([(f.kind, f.path, f.inode) for f in own], index)
        return [m for _, m in lists.values()], rows

    return InChild(read)


def _row_table(sent: Any) -> ProcessFileTable | None:
    """The child's answer as a ProcessFileTable (each shared list still one
    object); None when it failed (enrich then reads the rows itself)."""
    if sent is None:
        return None
    from kpeek.filemodel import ProcessFile, ProcessFileTable

    lists, rows = sent  # marshal keeps tuples tuples
    return ProcessFileTable({
        tgid: ([ProcessFile(tgid, *row) for row in own], lists[index])
        for tgid, (own, index) in rows.items()
    })


def _walk(
    tgids: list[int],
    explicit: bool,
    threads: bool,
    files: bool,
    stacks: bool | str,
    all_namespaces: bool,
) -> Snapshot:
    vanished = 0
    notes: list[str] = []
    read: list[tuple[Task, tuple[int, ...]]] = []
    for item in iter_tasks(tgids, threads=threads, stacks=stacks, all_namespaces=all_namespaces):
        if item is None:
            vanished += 1
        else:
            read.append(item)
    tasks = _with_ns_ppids(read)
    unreadable = sum(t.kernel_stack is None for t in tasks) if stacks else 0
    if unreadable:
        notes.append(
            f"kernel stacks of {unreadable} tasks not readable (permission denied)"
            if os.geteuid() == 0
            else "kernel stacks need root (CAP_SYS_ADMIN); not shown"
        )

    fds: tuple[FileDescriptor, ...] = ()
    open_files: dict[str, OpenFile] = {}
    inodes: dict[str, Inode] = {}
    if files:
        from kpeek.sources.proc_files import UNASKED

        leaders = [t.tgid for t in tasks if not t.is_thread]
        raw, lost, denied = _read_descriptors(leaders)
        vanished += lost
        if denied:
            if explicit:
                raise NotPermitted(
                    f"cannot read the descriptors of pid {denied[0]}: "
                    + (
                        "the kernel refused even root (a security module or ptrace restriction)"
                        if os.geteuid() == 0
                        else "it belongs to another user (run kpeek as root)"
                    )
                )
            notes.append(f"descriptors of {len(denied)} processes not readable (permission denied)")
        unasked = sum(d.error == UNASKED for d in raw)
        if unasked:
            notes.append(
                f"{unasked} files on FUSE mounts not stat()ed (a stuck server would hang "
                "kpeek); their type is unknown here, the bpf source knows it"
            )
        failed = [d for d in raw if d.error and d.error != UNASKED]
        if failed:
            reasons = ", ".join(sorted({d.error or "" for d in failed}))
            notes.append(
                f"{len(failed)} descriptors' files could not be examined "
                f"(their file system answered: {reasons})"
            )
        fds, open_files, inodes = _identify(raw, notes, {t.tgid: t.ppid for t in tasks})

    return Snapshot(
        source=SOURCE,
        tasks=tuple(tasks),
        fds=fds,
        open_files=open_files,
        inodes=inodes,
        vanished=vanished,
        notes=tuple(notes),
    )


def _with_ns_ppids(read: list[tuple[Task, tuple[int, ...]]]) -> list[Task]:
    # Parents outside the snapshot are read once each, however many children.
    known: dict[int, tuple[int, ...] | None] = {t.pid: nspids for t, nspids in read}
    result = []
    for task, nspids in read:
        if task.ppid not in known:
            known[task.ppid] = nspids_of(task.ppid)
        # Set on the Task just made (not yet seen by anyone), as its frozen
        # __init__ does: dataclasses.replace would make each Task twice.
        object.__setattr__(task, "ns_ppid", ns_ppid(nspids, known[task.ppid]))
        result.append(task)
    return result


def _read_descriptors(tgids: list[int]) -> tuple[list[RawDescriptor], int, list[int]]:
    """(descriptors, how many vanished, pids whose fds we may not read)."""
    from kpeek.sources.mounts import MountTable
    from kpeek.sources.proc_files import read_table

    raw: list[RawDescriptor] = []
    vanished = 0
    denied: list[int] = []
    mounts = MountTable()
    for tgid in tgids:
        try:
            table, closed, refused = read_table(tgid, mounts)
        except Vanished:
            continue  # the task itself was counted when it vanished
        except PermissionError:
            denied.append(tgid)
            continue
        raw += table
        vanished += closed
        if refused:
            denied.append(tgid)
    return raw, vanished, denied


def _identify(
    raw: list[RawDescriptor], notes: list[str], parents: dict[int, int]
) -> tuple[tuple[FileDescriptor, ...], dict[str, OpenFile], dict[str, Inode]]:
    from kpeek.ids import file_ids
    from kpeek.model import FileDescriptor, Inode, OpenFile
    from kpeek.sources.filekind import file_type
    from kpeek.sources.kcmp import KcmpUnavailable
    from kpeek.sources.sharing import group_open_files

    try:
        groups = group_open_files(raw, parents=parents)
    except KcmpUnavailable as e:
        notes.append(f"open-file sharing unknown ({e.strerror}); each fd shown as its own file")
        groups = [[d] for d in raw]

    # Made once per open file (and per inode) and once per descriptor, some
    # 100,000 times: positional, the RawDescriptor read by index (see its fields).
    ident = file_ids()
    fds: list[FileDescriptor] = []
    add_fds = fds.extend
    open_files: dict[str, OpenFile] = {}
    inodes: dict[str, Inode] = {}
    for group in groups:
        # The lowest (tgid, fd): a RawDescriptor is a tuple that starts with them.
        first = group[0] if len(group) == 1 else min(group)
        tgid, fd, path, dev, ino, mode, nlink, size, pos, flags, _, mnt_id, inode_id = first[:13]
        file_id = ident(tgid, fd, inode_id)
        open_files[file_id] = OpenFile(file_id, inode_id, path, pos, flags, mnt_id)
        if inode_id not in inodes:
            inodes[inode_id] = Inode(inode_id, dev, ino, file_type(mode, path), nlink, size)
        add_fds([FileDescriptor(d[0], d[1], d[10], file_id) for d in group])
    fds.sort(key=_by_number)
    return tuple(fds), open_files, inodes


_by_number = operator.attrgetter("tgid", "fd")
