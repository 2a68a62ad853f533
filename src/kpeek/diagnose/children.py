"""Wait edges from wait4/waitid: a parent sleeping in do_wait waits for its
children to change state; any one of them exiting wakes it (any-of edges).
"""

from __future__ import annotations

from kpeek.diagnose.graph import WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import read_syscall

_WAIT4 = {"x86_64": 61, "aarch64": 260}


def child_wait_edges(graph: WaitGraph) -> None:
    """Add edges parent thread -> child process for tasks sleeping in do_wait.

    When wait4's pid argument names one child, only that child is linked.
    """
    snapshot = graph.snapshot
    # A tracer's wait4 returns when a tracee stops: a tracer with a stopped
    # tracee is about to wake, not blocked by it (strace, gdb, kpeek trace).
    tracers = {r.by for r in graph.roots.values() if r.kind == "traced"}
    children: dict[int, list[int]] = {}
    for p in snapshot.processes():
        children.setdefault(p.ppid, []).append(p.pid)
    for t in snapshot.tasks:
        if t.wchan != "do_wait" or t.tgid in tracers:
            continue
        kids = children.get(t.tgid, [])
        call = read_syscall(t)
        if call and call[0] in _WAIT4.values() and call[1]:
            wanted = call[1][0] & 0xFFFFFFFF
            if 0 < wanted < 1 << 31 and wanted in kids:
                kids = [wanted]
        for kid in kids:
            graph.add(WaitEdge(task_node(t.pid), proc_node(kid), "child",
                               "a child to exit", any_of=True, source="wchan do_wait"))
