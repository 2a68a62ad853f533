"""The three tables as plain dicts: what --json prints and text views format.

A descriptor row joins the three tables: the fd slot, its open file
(offset, flags, shared by every fd with the same ``open_file`` id) and the
inode behind it.
"""

from __future__ import annotations

from collections import defaultdict

from kpeek.ids import show_pointer
from kpeek.model import FileDescriptor, Inode, OpenFile, Snapshot, Task
from kpeek.render.fdfacts import FdFacts
from kpeek.render.fileflags import access_mode, flag_names

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any


def namespace_id(inode: int) -> str:
    """A PID namespace as shown to users: its inode number, as lsns(8) shows it.

    Not a kernel pointer, so not hashed; stable for the namespace's life, so
    ``ps --ns`` can take it back. 0 means the kernel refused the ns link.
    """
    return str(inode) if inode else "?"


def task_dict(t: Task, raw_pointers: bool = False) -> dict[str, Any]:
    return {
        "pid": t.pid,
        "tgid": t.tgid,
        "ppid": t.ppid,
        "pgid": t.pgid,
        "sid": t.sid,
        "comm": t.comm,
        "state": t.state,
        "state_name": t.state_name,
        "wchan": t.wchan,
        "uid": t.uid,
        "pidns": t.pidns,
        "ns": {
            "pid": t.ns_pid,
            "tgid": t.ns_tgid,
            "ppid": t.ns_ppid,
            "pgid": t.ns_pgid,
            "sid": t.ns_sid,
        },
        "is_thread": t.is_thread,
        "kernel_stack": list(t.kernel_stack) if t.kernel_stack is not None else None,
        "blocker": show_pointer(t.blocker or None, raw_pointers),
        "address": show_pointer(t.address, raw_pointers),
    }


def fd_dict(snap: Snapshot, d: FileDescriptor) -> dict[str, Any]:
    """One descriptor with what its open file and inode say, for reading at a glance.

    ``sharers`` counts every descriptor (this one included) on the open file;
    who they are is in the open file table (see :func:`files_document`).
    """
    return {"fd": d.fd, "cloexec": d.cloexec, **_fd_file_part(snap, d.open_file)}


# What fd_dict repeats for every holder of an open file, made once per file
# of the last snapshot seen (a whole-system document has 3 fds per file).
_parts: tuple[Snapshot | None, dict[str, dict[str, Any]]] = (None, {})


def _fd_file_part(snap: Snapshot, file_id: str) -> dict[str, Any]:
    global _parts
    if _parts[0] is not snap:
        _parts = (snap, {})
    part = _parts[1].get(file_id)
    if part is None:
        f = snap.open_files[file_id]
        inode = snap.inodes.get(f.inode)
        part = _parts[1][file_id] = {
            "open_file": file_id,
            "pos": f.pos,
            "flags": f.flags,
            "access": access_mode(f.flags),
            "flag_names": flag_names(f.flags),
            "type": inode.type if inode else "unknown",
            "path": f.path,
            "inode": f.inode,
            "sharers": len(snap.holders(file_id)),
        }
    return part


def open_file_dict(snap: Snapshot, f: OpenFile, raw_pointers: bool = False) -> dict[str, Any]:
    return {
        "id": f.id,
        "inode": f.inode,
        "path": f.path,
        "pos": f.pos,
        "flags": f.flags,
        "access": access_mode(f.flags),
        "flag_names": flag_names(f.flags),
        "refcount": f.refcount,
        "holders": [[d.tgid, d.fd] for d in snap.holders(f.id)],
        "address": show_pointer(f.address, raw_pointers),
    }


def inode_dict(inode: Inode, raw_pointers: bool = False) -> dict[str, Any]:
    return {
        "id": inode.id,
        "type": inode.type,
        "nlink": inode.nlink,
        "size": inode.size,
        "address": show_pointer(inode.address, raw_pointers),
    }


def files_document(
    snap: Snapshot,
    processes: list[Task],
    raw_pointers: bool = False,
    chosen: set[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The three tables of ``processes``: descriptor tables, open files, inodes.

    Linear in the number of descriptors: sharing is told once per open file
    (its ``holders``), not repeated in every descriptor that shares it.
    ``chosen`` limits the descriptors to these (tgid, fd). Descriptors carry
    optional keys (socket, locks, details, endpoints) where there is something
    to say, and each process its ``process_files`` (cwd, rtd, txt, mem): both
    added within schema version 1, which only ever gains keys.
    """
    tables = [
        (t, [d for d in snap.fds_of(t.tgid) if chosen is None or (d.tgid, d.fd) in chosen])
        for t in processes
    ]
    facts = FdFacts(snap)
    others: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for pf in snap.process_files:
        others[pf.tgid].append({"kind": pf.kind, "path": pf.path, "inode": pf.inode})
    file_ids = {d.open_file for _, fds in tables for d in fds}
    files = [snap.open_files[i] for i in sorted(file_ids)]
    inode_ids = sorted({f.inode for f in files})
    return {
        **snapshot_meta(snap),
        "processes": [
            {
                **task_dict(t, raw_pointers),
                "fds": [{**fd_dict(snap, d), **facts.fd_extras(d)} for d in fds],
                "process_files": others.get(t.tgid, []),
            }
            for t, fds in tables
        ],
        "open_files": [open_file_dict(snap, f, raw_pointers) for f in files],
        "inodes": [inode_dict(snap.inodes[i], raw_pointers) for i in inode_ids if i in snap.inodes],
    }


def snapshot_meta(snap: Snapshot) -> dict[str, Any]:
    return {
        "source": snap.source,
        "taken_at": snap.taken_at,
        "vanished": snap.vanished,
        "notes": list(snap.notes),
    }
