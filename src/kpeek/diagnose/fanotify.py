"""Wait edges from fanotify permission events: a task that opens, reads or
executes a file that a listener watches with a permission mask sleeps until
the listener writes its answer (an antivirus or audit daemon that stops
answering hangs every such open, in D state in fanotify_handle_event).

The listener is whoever holds the fanotify group's descriptor. The group's
fdinfo lists its marks: an inode (ino, sdev), a mount (mnt_id) or a whole
file system (sdev), each with its event mask. A waiter is matched to the
groups with a permission mark that covers the file it waits on, when that
file is known (the inode of its descriptor, or its path's mount); otherwise,
or when none covers it, to every group with a permission mark (inferred).
"""

from __future__ import annotations

import os
from dataclasses import field

from kpeek.diagnose.fdindex import index_of
from kpeek.diagnose.graph import WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import syscall_target
from kpeek.model import Task
from kpeek.records import record
from kpeek.sources.fdinfo_details import read_fdinfo
from kpeek.sources.mounts import deepest_mount, read_mountinfo

FANOTIFY_WAITS = ("fanotify_get_response", "fanotify_handle_event")
# FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS (6.14+)
PERMISSION_EVENTS = 0x10000 | 0x20000 | 0x40000 | 0x100000
GROUP_PATH = "anon_inode:[fanotify]"


@record(frozen=True, slots=True)
class Mark:
    mask: int
    ino: int | None = None  # an inode mark
    dev: int | None = None  # kernel dev_t (major << 20 | minor): inode and sb marks
    mnt_id: int | None = None  # a mount mark


@record
class Group:
    holders: dict[int, list[int]] = field(default_factory=dict)  # tgid -> fds
    marks: list[Mark] = field(default_factory=list)


@record(frozen=True, slots=True)
class Target:
    """What is known of the file a waiter is opening or reading."""

    dev: int | None = None
    ino: int | None = None
    mnt_id: int | None = None


def is_fanotify_waiter(t: Task) -> bool:
    if (t.wchan or "").startswith(FANOTIFY_WAITS):
        return True
    return any(f.startswith(FANOTIFY_WAITS) for f in (t.kernel_stack or ())[:3])


def parse_marks(fdinfo: bytes) -> list[Mark]:
    """The marks of a fanotify group's fdinfo ("fanotify ino:.. sdev:.. mask:..",
    "fanotify mnt_id:.. mask:..", "fanotify sdev:.. mask:..")."""
    marks = []
    for line in fdinfo.splitlines():
        if not line.startswith(b"fanotify ") or b"mask:" not in line:
            continue
        fields = dict(p.split(b":", 1) for p in line.split()[1:] if b":" in p)
        try:
            mask = int(fields[b"mask"], 16)
            ino = int(fields[b"ino"], 16) if b"ino" in fields else None
            dev = int(fields[b"sdev"], 16) if b"sdev" in fields else None
            mnt = int(fields[b"mnt_id"], 16) if b"mnt_id" in fields else None
        except (KeyError, ValueError):
            continue
        marks.append(Mark(mask, ino, dev, mnt))
    return marks


def covers(mark: Mark, target: Target) -> bool:
    """Whether ``mark`` may cover the target (unknown fields do not exclude)."""
    if mark.mnt_id is not None:
        return target.mnt_id is None or mark.mnt_id == target.mnt_id
    if mark.dev is not None and target.dev is not None and mark.dev != target.dev:
        return False
    return mark.ino is None or target.ino is None or mark.ino == target.ino


def _groups(graph: WaitGraph) -> list[Group]:
    """Every fanotify group with a permission mark, by the file its fds share."""
    snapshot = graph.snapshot
    by_file: dict[str, Group] = {}
    for d in snapshot.fds:
        f = snapshot.open_files.get(d.open_file)
        if f is None or f.path != GROUP_PATH:
            continue
        group = by_file.get(d.open_file)
        if group is None:
            raw = read_fdinfo(d.tgid, d.fd)
            if raw is None:
                continue
            group = by_file[d.open_file] = Group(marks=parse_marks(raw))
        group.holders.setdefault(d.tgid, []).append(d.fd)
    return [g for g in by_file.values() if any(m.mask & PERMISSION_EVENTS for m in g.marks)]


def _target(graph: WaitGraph, t: Task) -> Target:
    target = syscall_target(t)
    if target is None:
        return Target()
    if target.fd is not None:
        f = index_of(graph.snapshot).file(t.tgid, target.fd)
        if f is not None:
            try:
                major, minor, ino = (int(x) for x in f.inode.split(":"))
                return Target(dev=(major << 20) | minor, ino=ino)
            except ValueError:
                return Target()
    if target.path is not None:
        mounts = read_mountinfo(f"/proc/{t.tgid}/mountinfo")
        m = deepest_mount(target.path, ((m.mountpoint, m) for m in mounts))
        if m is not None:
            return Target(dev=(m.major << 20) | m.minor, mnt_id=m.mnt_id,
                          ino=_local_inode(t, target.path, m.fstype))
    return Target()


# Local file systems, where stat() of a path cannot wait on a server (the
# file's own open is what waits, and stat sends no fanotify permission event).
_LOCAL = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "devtmpfs", "ramfs", "vfat", "f2fs"}


def _local_inode(t: Task, path: str, fstype: str) -> int | None:
    """The inode number of ``path`` as the task sees it (through its root)."""
    if fstype not in _LOCAL:
        return None
    try:
        return os.stat(f"/proc/{t.tgid}/root{path}").st_ino
    except OSError:
        return None


def fanotify_edges(graph: WaitGraph) -> None:
    """Add edges waiter -> the listeners that must answer its permission event."""
    waiters = [t for t in graph.snapshot.tasks if is_fanotify_waiter(t)]
    if not waiters:
        return
    groups = _groups(graph)
    source = "wchan fanotify_handle_event, /proc/PID/fdinfo of fanotify groups"
    for t in waiters:
        target = _target(graph, t)
        covering = [g for g in groups if any(m.mask & PERMISSION_EVENTS and covers(m, target)
                                             for m in g.marks)]
        matched = covering or groups
        if not matched:
            graph.add(WaitEdge(task_node(t.pid), None, "fanotify",
                               "the answer to a fanotify permission event",
                               note="no listener with a permission mark is seen", source=source))
            continue
        holders = sorted({tgid for g in matched for tgid in g.holders})
        for tgid in holders:
            fds = sorted({fd for g in matched for fd in g.holders.get(tgid, ())})
            graph.add(WaitEdge(
                task_node(t.pid), proc_node(tgid), "fanotify",
                "the answer to a fanotify permission event", any_of=len(holders) > 1,
                detail=f"fanotify fd {', '.join(map(str, fds))}",
                relation="from the listener", certain=bool(covering) or len(groups) == 1,
                source=source))
