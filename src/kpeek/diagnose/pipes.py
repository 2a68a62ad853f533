"""Wait edges from pipes: a reader sleeping in pipe_read waits for the
processes that hold the pipe's write end.

The reader wakes when any of them writes, and reads end-of-file only when
all of them have closed it: any-of edges. Whether the wait can ever end is
decided by graph.stuck_nodes: a reader whose only writer is itself (the
missing close()), or whose writers all wait for it, is stuck; a reader with
a slow writer is not.
"""

from __future__ import annotations

import os

from kpeek.diagnose.fdindex import index_of
from kpeek.diagnose.graph import Root, WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import open_file_of, syscall_target
from kpeek.model import FileDescriptor, Snapshot, Task
from kpeek.records import record

# Only anonymous pipes: anyone may still open a named FIFO for writing (and
# daemons open their own FIFO O_RDWR on purpose, to wait for writers), so a
# FIFO reader is never "stuck" on the write ends that exist now.
PIPE_TYPES = ("pipe",)


def is_pipe_reader(task: Task) -> bool:
    """True when the task sleeps reading a pipe or FIFO (see PIPE_TYPES)."""
    if task.wchan and "pipe_read" in task.wchan:
        return True
    top = task.kernel_stack[0] if task.kernel_stack else ""
    return "pipe_read" in top


@record(frozen=True, slots=True)
class PipeWait:
    """A reader, the pipe it reads and every descriptor holding its write end."""

    reader: Task
    read_fd: int | None
    inode: str
    path: str
    writers: tuple[FileDescriptor, ...]


def _writable(flags: int) -> bool:
    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)


def _read_inode(snapshot: Snapshot, task: Task, live: bool) -> tuple[int | None, str] | None:
    # /proc/PID/syscall is the live kernel's: a dump's pid names another process here
    target = syscall_target(task) if live else None
    if target is not None and target.fd is not None:
        file_id = open_file_of(snapshot, task.tgid, target.fd)
        f = snapshot.open_files.get(file_id or "")
        if f is not None and snapshot.inodes.get(f.inode) and \
                snapshot.inodes[f.inode].type in PIPE_TYPES:
            return target.fd, f.inode
        return None  # it reads a FIFO (or what the fd table no longer holds): no guess
    # Without the syscall: the one pipe this process reads from, if only one.
    readable = []
    for fd, file_id in sorted(index_of(snapshot).table(task.tgid).items()):
        f = snapshot.open_files.get(file_id)
        inode = snapshot.inodes.get(f.inode) if f else None
        if f and inode and inode.type in PIPE_TYPES and (f.flags & os.O_ACCMODE) != os.O_WRONLY:
            readable.append((fd, f.inode))
    if len({inode for _, inode in readable}) == 1:
        return readable[0]
    return None


def pipe_waits(snapshot: Snapshot, *, live: bool = True) -> list[PipeWait]:
    """Every task sleeping in pipe_read whose pipe we can identify."""
    index = index_of(snapshot)
    waits = []
    for task in snapshot.tasks:
        if not is_pipe_reader(task):
            continue
        found = _read_inode(snapshot, task, live)
        if found is None:
            continue
        fd, inode = found
        path = index.path_of_inode(inode) or inode
        waits.append(PipeWait(task, fd, inode, path, tuple(index.holders(inode, _writable))))
    return waits


def pipe_edges(graph: WaitGraph, *, live: bool = True) -> list[PipeWait]:
    """Add any-of edges reader -> each process holding the write end."""
    waits = graph.pipe_waits = pipe_waits(graph.snapshot, live=live)
    for w in waits:
        if not w.writers and not graph.all_descriptors_seen():
            continue  # the write end may be in a table we could not read
        if not w.writers:  # the write end is in no process: in flight in a message?
            node = f"none:pipe:{w.inode}"
            graph.roots[node] = Root(
                "nobody", f"no process holds the write end of {w.path}",
                "nothing will ever write to it: end the reader (the write end may sit "
                "unreceived in a unix socket message)")
            graph.add(WaitEdge(task_node(w.reader.pid), node, "pipe",
                               f"data or end-of-file on {w.path}", any_of=True, path=w.path,
                               note="no process holds the write end",
                               source="wchan pipe_read, fd table"))
            continue
        by_process: dict[int, list[int]] = {}
        for d in w.writers:
            by_process.setdefault(d.tgid, []).append(d.fd)
        for tgid, fds in sorted(by_process.items()):
            graph.add(WaitEdge(
                task_node(w.reader.pid), proc_node(tgid), "pipe",
                f"data or end-of-file on {w.path}" + (f" (fd {w.read_fd})" if w.read_fd else ""),
                any_of=True, path=w.path,
                detail=f"write end open as fd {', '.join(map(str, fds))}",
                source="wchan pipe_read, /proc/PID/syscall, fd table"))
    return waits


def relation(snapshot: Snapshot, reader: Task, holder_tgid: int) -> str | None:
    """How a write-end holder is related to the reader, in words."""
    if holder_tgid == reader.tgid:
        return "the reader itself holds it"
    ancestors = _ancestors(snapshot, holder_tgid)
    if reader.tgid in ancestors:
        return "a child of the reader inherited it"
    if reader.tgid != holder_tgid and holder_tgid in _ancestors(snapshot, reader.tgid):
        return "the reader's parent (or ancestor) still holds it"
    return None


def _ancestors(snapshot: Snapshot, tgid: int) -> list[int]:
    parents = {t.pid: t.ppid for t in snapshot.processes()}
    seen: list[int] = []
    cur = parents.get(tgid)
    while cur and cur not in seen and len(seen) < 256:
        seen.append(cur)
        cur = parents.get(cur)
    return seen
