"""What cannot make progress by itself: the roots of the wait-for graph.

* a task stopped by a signal (state T): SIGCONT releases it;
* a task stopped by its tracer (state t, or T with a tracer): the tracer
  (TracerPid of /proc/PID/status) must continue or detach it;
* a task in a frozen cgroup: cgroup v2 ``cgroup.freeze`` (its own or an
  ancestor's), or the v1 freezer's ``freezer.state``; thawing releases it;
* a frozen file system: a task asleep in the superblock's freeze protection
  (``percpu_rwsem_wait`` under ``mnt_want_write``, ``vfs_write``...) waits on
  whoever froze it; ``fsfreeze -u MOUNT`` releases it.

Cgroup trees are read only when a cgroup is frozen (one walk of the
hierarchies); tracers only for stopped tasks: a healthy machine costs a
directory walk.
"""

from __future__ import annotations

import os

from kpeek.diagnose.graph import Root, WaitEdge, WaitGraph, task_node
from kpeek.diagnose.procinfo import syscall_target
from kpeek.model import Task
from kpeek.sources.mounts import read_mountinfo
from kpeek.sources.proc_tasks import Vanished, parse_status, read_bytes

FREEZE_WAITS = ("percpu_rwsem_wait", "__percpu_down_read", "percpu_down_read")
# Frames under the wait that take a superblock's freeze protection
# (sb_start_write and friends are inline: their callers show).
FREEZE_CALLERS = ("mnt_want_write", "__sb_start_write", "sb_start_write", "file_start_write",
                  "vfs_write", "vfs_writev", "do_iter_write", "vfs_iter_write",
                  "do_truncate", "do_sys_ftruncate", "vfs_fallocate", "ksys_fallocate",
                  "do_page_mkwrite", "page_mkwrite", "ext4_page_mkwrite", "filemap_page_mkwrite",
                  "vfs_copy_file_range", "do_splice", "ext4_buffered_write_iter",
                  "__ext4_ioctl", "xfs_file_buffered_write", "do_sys_openat2", "path_openat")


def find_roots(graph: WaitGraph, live: bool = True) -> None:
    """Fill ``graph.roots`` with stopped and frozen tasks, and add an edge to a
    frozen file system for every task that waits on one. Not ``live`` (a
    dump): only the task states are known, not tracers, cgroups or mounts."""
    tasks = graph.snapshot.tasks
    frozen = frozen_cgroup_tasks() if live else {}
    for t in tasks:
        node = task_node(t.pid)
        if t.pid in frozen:
            graph.roots[node] = frozen[t.pid]
        elif t.state in ("T", "t"):
            graph.roots[node] = _stopped(graph, t) if live else Root(
                "stopped", "stopped (by a signal or a tracer)", "SIGCONT, or its tracer")
    if not live:
        return
    for t in tasks:
        if t.state == "D" and task_node(t.pid) not in graph.roots:
            _frozen_fs(graph, t)


def tracer_of(t: Task) -> int:
    if t.tracer is not None:  # read with the task (BPF)
        return t.tracer
    try:
        status = parse_status(read_bytes(f"/proc/{t.tgid}/task/{t.pid}/status"))
        return int(status.get(b"TracerPid", b"0"))
    except (Vanished, OSError, ValueError):
        return 0


def _stopped(graph: WaitGraph, t: Task) -> Root:
    tracer = tracer_of(t)
    if tracer:
        tt = graph.task(tracer)
        name = f"{tt.comm} (pid {tracer})" if tt else f"pid {tracer}"
        return Root("traced", f"stopped by its tracer {name}",
                    f"let the tracer {tracer} continue or detach it, or end the tracer",
                    by=tracer)
    return Root("stopped", "stopped by a signal (SIGSTOP, SIGTSTP...)",
                f"kill -CONT {t.tgid}")


# -- frozen cgroups ------------------------------------------------------------------
def _cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> tuple[list[str], list[str]]:
    """(cgroup v2 mount points, cgroup v1 freezer mount points)."""
    v2, v1 = [], []
    for m in read_mountinfo(mountinfo):
        if m.fstype == "cgroup2":
            v2.append(m.mountpoint)
        elif m.fstype == "cgroup" and "freezer" in m.super_options.split(","):
            v1.append(m.mountpoint)
    return v2, v1


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return ""


def _tids(path: str) -> list[int]:
    return [int(x) for x in _read(path).split() if x.isdigit()]


def frozen_cgroup_tasks() -> dict[int, Root]:
    """tid -> Root for every task in a frozen cgroup (v2 or v1 freezer)."""
    found: dict[int, Root] = {}
    v2, v1 = _cgroup_mounts()
    for mount in v2:
        frozen_at: dict[str, str] = {}  # directory -> the frozen ancestor's directory
        for directory, _, _ in os.walk(mount):
            parent = os.path.dirname(directory)
            if parent in frozen_at:
                frozen_at[directory] = frozen_at[parent]
            elif _read(os.path.join(directory, "cgroup.freeze")).strip() == "1":
                frozen_at[directory] = directory
            else:
                continue
            name = "/" + os.path.relpath(frozen_at[directory], mount).removeprefix(".")
            root = Root("frozen-cgroup", f"in the frozen cgroup {name.rstrip('/') or '/'}",
                        f"echo 0 > {frozen_at[directory]}/cgroup.freeze")
            for tid in _tids(os.path.join(directory, "cgroup.threads")):
                found[tid] = root
    for mount in v1:
        for directory, _, _ in os.walk(mount):
            state = _read(os.path.join(directory, "freezer.state")).strip()
            if state not in ("FROZEN", "FREEZING"):
                continue
            name = "/" + os.path.relpath(directory, mount).removeprefix(".")
            root = Root("frozen-cgroup", f"in the frozen cgroup {name} (v1 freezer)",
                        f"echo THAWED > {directory}/freezer.state")
            for tid in _tids(os.path.join(directory, "tasks")):
                found.setdefault(tid, root)
    return found


# -- frozen file systems ---------------------------------------------------------------
def is_freeze_wait(t: Task) -> bool:
    """A sleep in the freeze protection of a superblock (needs the stack:
    percpu rw-semaphores guard other things too)."""
    frames = [f.split("+", 1)[0] for f in (t.kernel_stack or ())]
    top = frames[:3]
    if not any(f.startswith(FREEZE_WAITS) for f in top):
        return False
    return any(f.startswith(FREEZE_CALLERS) for f in frames[1:8])


def _mount_of(t: Task, graph: WaitGraph) -> tuple[str, str, str] | None:
    """(major:minor, mount point, device) of the file system the task's call
    is on, from its mountinfo."""
    target = syscall_target(t)
    mnt_id = None
    path = None
    if target is not None and target.fd is not None:
        from kpeek.diagnose.procinfo import open_file_of

        f = graph.snapshot.open_files.get(open_file_of(graph.snapshot, t.tgid, target.fd) or "")
        if f is not None:
            mnt_id, path = f.mnt_id, f.path
    elif target is not None:
        path = target.path
    best = None
    for m in read_mountinfo(f"/proc/{t.tgid}/mountinfo"):
        where = m.mountpoint
        entry = (m.dev_text, where, m.source)
        if mnt_id is not None and m.mnt_id == mnt_id:
            return entry
        if path and (path == where or path.startswith(where.rstrip("/") + "/")) and (
                best is None or len(where) > len(best[1])):
            best = entry
    return best


def _frozen_fs(graph: WaitGraph, t: Task) -> None:
    if not is_freeze_wait(t):
        return
    mount = _mount_of(t, graph)
    if mount is None:
        node = "fs:unknown"
        graph.roots[node] = Root("frozen-fs", "a frozen file system (which one is not visible)",
                                 "fsfreeze -u on the frozen mount (see /proc/mounts)")
        resource = "a frozen file system"
    else:
        dev, where, device = mount
        node = f"fs:{dev}"
        graph.roots[node] = Root(
            "frozen-fs", f"the file system on {device} at {where} is frozen (fsfreeze -f)",
            f"fsfreeze -u {where}")
        resource = f"the frozen file system {where} ({device})"
    graph.add(WaitEdge(task_node(t.pid), node, "frozen-fs", resource,
                       source="kernel stack (percpu_rwsem_wait under the freeze protection), "
                              "mountinfo"))
