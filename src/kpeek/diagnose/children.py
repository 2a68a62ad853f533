"""Wait edges from wait4/waitid: a parent sleeping in do_wait waits for its
children to change state; any one of them exiting wakes it (any-of edges).

The call's arguments narrow the children it waits for, as the kernel's
do_wait does: wait4's pid (> 0 one child, 0 the caller's process group,
< -1 the group -pid, -1 any), waitid's idtype and id (P_PID, P_PGID with 0
for the caller's group, P_PIDFD through the pidfd's fdinfo, P_ALL).
"""

from __future__ import annotations

from kpeek.diagnose.graph import WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import s32, syscall_name
from kpeek.model import Task
from kpeek.sources.fdinfo_details import parse, read_fdinfo

P_ALL, P_PID, P_PGID, P_PIDFD = 0, 1, 2, 3


def child_wait_edges(graph: WaitGraph) -> None:
    """Add edges parent thread -> each child process its wait may reap."""
    snapshot = graph.snapshot
    # A tracer's wait4 returns when a tracee stops: a tracer with a stopped
    # tracee is about to wake, not blocked by it (strace, gdb, kpeek trace).
    tracers = {r.by for r in graph.roots.values() if r.kind == "traced"}
    children: dict[int, list[Task]] = {}
    for p in snapshot.processes():
        children.setdefault(p.ppid, []).append(p)
    for t in snapshot.tasks:
        if t.wchan != "do_wait" or t.tgid in tracers:
            continue
        kids = _waited_for(t, children.get(t.tgid, []))
        for kid in kids:
            graph.add(WaitEdge(task_node(t.pid), proc_node(kid.pid), "child",
                               "a child to exit", any_of=True, source="wchan do_wait"))


def _waited_for(t: Task, kids: list[Task]) -> list[Task]:
    """The children ``t``'s wait4/waitid may reap (all of them when its
    system call is unknown)."""
    call = syscall_name(t)
    if call is None:
        return kids
    name, args = call
    if name == "wait4":
        pid = s32(args[0])
        if pid > 0:
            return [k for k in kids if k.pid == pid]
        if pid == 0 or pid < -1:
            group = t.pgid if pid == 0 else -pid
            return [k for k in kids if k.pgid == group]
    elif name == "waitid":
        idtype, ident = args[0] & 0xFFFFFFFF, s32(args[1])
        if idtype == P_PID:
            return [k for k in kids if k.pid == ident]
        if idtype == P_PGID:
            group = ident or t.pgid
            return [k for k in kids if k.pgid == group]
        if idtype == P_PIDFD:
            raw = read_fdinfo(t.tgid, ident)
            info = parse("anon_inode:[pidfd]", raw) if raw is not None else None
            if info and info.get("kind") == "pidfd":
                return [k for k in kids if k.pid == info["pid"]]
    return kids
