"""Findings told in words (plain str; callers escape for their output),
as JSON-ready dicts, and the wait-for graph as Graphviz DOT.
"""

from __future__ import annotations

from kpeek.diagnose.findings import Deadlock, Diagnosis, HungTask, NeverEof, who
from kpeek.diagnose.graph import WaitEdge, WaitGraph, node_pid
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

SLEEP_SOURCE = ("time since it last ran: se.exec_start (read by the BPF iterator, or from "
                "/proc/PID/sched), against the scheduler clock calibrated on kpeek's own "
                "exec_start")


def edge_words(graph: WaitGraph, e: WaitEdge) -> str:
    """ "waits for <resource>, held by <holder>" for one edge."""
    if e.holder and not e.holder.startswith(("task:", "proc:")):
        text = f"waits for {e.resource}"  # a frozen file system, an end nobody holds
    elif e.kind == "fuse":
        text = f"waits for an answer on {e.resource}"
        if e.holder:
            text += f", served by {who(graph, e.holder)}"
    elif e.kind == "pipe":
        text = f"waits for {e.resource}"
        if e.holder:
            # a writer to a full pipe waits on the read end (relation says which)
            text += f", {e.relation or 'write end held by'} {who(graph, e.holder)}"
    elif e.kind == "child":
        text = f"waits for its child {who(graph, e.holder)} to exit" if e.holder else \
            "waits for a child"
    elif e.kind == "pidfd":  # a poll on a pidfd: the process it names to exit
        text = f"waits for {who(graph, e.holder)} to exit ({e.resource})"
    elif e.kind == "thread":
        return f"acts through its thread {who(graph, e.holder)}" if e.holder else ""
    elif e.relation:
        text = f"waits for {e.resource}"
        text += f", {e.relation} {who(graph, e.holder)}" if e.holder else ""
    else:
        text = f"waits for {e.resource}"
        text += f", held by {who(graph, e.holder)}" if e.holder else ""
    if e.detail:
        text += f" [{e.detail}]"
    if e.note:
        text += f" ({e.note})"
    if not e.certain:
        text += " (inferred)"
    return text


def _same_task(e: WaitEdge) -> bool:
    return e.kind == "thread" and e.holder is not None and node_pid(e.holder) == node_pid(e.waiter)


def chain_lines(graph: WaitGraph, edges: tuple[WaitEdge, ...] | list[WaitEdge],
                asleep: dict[int, float] | None = None) -> list[str]:
    """One line per wait. A process's hop to one of its threads becomes a
    prefix of the thread's line ("X (pid 1), through its thread Y, waits
    for ..."); a hop to its own main thread is dropped. D-state waiters get
    their time asleep when ``asleep`` knows it."""
    lines = []
    through = ""
    for e in edges:
        if e.kind == "thread":
            if not _same_task(e):
                through = f"{who(graph, e.waiter)}, through its thread "
            continue
        pid = node_pid(e.waiter)
        slept = ""
        if asleep and e.waiter.startswith("task:") and pid in asleep:
            slept = f" (D state, asleep {asleep[pid]:.1f} s)"
        comma = "," if through else ""
        lines.append(f"{through}{who(graph, e.waiter)}{slept}{comma} {edge_words(graph, e)}")
        through = ""
    return lines


def deadlock_text(graph: WaitGraph, d: Deadlock, limit: int = 5,
                  asleep: dict[int, float] | None = None) -> list[str]:
    tasks = {node_pid(n) for n in d.nodes if n.startswith("task:")}
    processes = {node_pid(n) for n in d.nodes if n.startswith("proc:")} - tasks
    many = "s" if len(d.cycles) > 1 else ""
    who_waits = f"{len(tasks)} tasks" + (f" and {len(processes)} process" if processes else "")
    if len(processes) > 1:
        who_waits += "es"
    out = [f"DEADLOCK: {who_waits} wait on each other in a circle "
           f"({len(d.cycles)} cycle{many})"]
    for i, cycle in enumerate(d.cycles[:limit], 1):
        if len(d.cycles) > 1:
            out.append(f"  cycle {i}:")
        out.extend(f"    {line}" for line in chain_lines(graph, cycle, asleep))
        out.append(f"    ... and so back to {who(graph, cycle[0].waiter)}: none of them can go on.")
    if len(d.cycles) > limit:
        out.append(f"  ({len(d.cycles) - limit} more cycles through the same tasks)")
    return out


def hung_text(graph: WaitGraph, h: HungTask) -> list[str]:
    state = "in D state" if h.task.state == "D" else f"blocked for good (state {h.task.state})"
    since = f", asleep {h.asleep:.1f} s" if h.asleep is not None else ""
    wchan = f" (in {h.task.wchan})" if h.task.wchan else ""
    head = "HUNG" if h.task.state == "D" else "STUCK"
    out = [f"{head}: {who(graph, f'task:{h.task.pid}')} {state}{since}{wchan}"]
    out.extend(f"    {line}" for line in chain_lines(graph, h.chain))
    out.append(f"    root: {h.root}")
    if h.fix:
        out.append(f"    fix: {h.fix}")
    return out


def pipe_text(graph: WaitGraph, p: NeverEof) -> list[str]:
    w = p.wait
    fd = f" (fd {w.read_fd})" if w.read_fd is not None else ""
    out = [f"PIPE NEVER ENDS: {who(graph, f'task:{w.reader.pid}')} reads {w.path}{fd}, but its "
           "write end is still open where nothing will write to it or close it:"]
    for c in p.culprits:
        rel = f" -- {c.relation}" if c.relation else ""
        out.append(f"    {c.comm} (pid {c.tgid}) fd {', '.join(map(str, c.fds))}{rel}")
    out.append("    fix: close the write end in every process but the writer "
               "(close() after fork/dup2, or O_CLOEXEC)")
    return out


def all_text(diag: Diagnosis) -> list[list[str]]:
    """Every finding as a block of lines."""
    g = diag.graph
    blocks = [deadlock_text(g, d, asleep=diag.asleep) for d in diag.deadlocks]
    blocks += [pipe_text(g, p) for p in diag.pipes]
    blocks += [hung_text(g, h) for h in diag.hung]
    blocks += [[f"KERNEL REPORT: {r.title} ({r.kind}, log line {r.line + 1}): "
                "`kpeek oops` decodes it"] for r in diag.reports]
    return blocks


# -- JSON ----------------------------------------------------------------------
def _edge_json(e: WaitEdge) -> dict[str, Any]:
    return {"waiter": e.waiter, "holder": e.holder, "kind": e.kind, "resource": e.resource,
            "any_of": e.any_of, "path": e.path, "detail": e.detail, "note": e.note,
            "certain": e.certain, "source": e.source, "relation": e.relation}


def _node_json(graph: WaitGraph, node: str, stuck: set[str]) -> dict[str, Any]:
    t = graph.task(node_pid(node))
    root = graph.roots.get(node) or next(
        (graph.roots[f"task:{x.pid}"] for x in graph.threads_of(node_pid(node))
         if node.startswith("proc:") and f"task:{x.pid}" in graph.roots), None)
    return {"id": node, "pid": node_pid(node) if t else None, "comm": t.comm if t else None,
            "state": t.state if t else None, "wchan": t.wchan if t else None,
            "stuck": node in stuck,
            "root": {"kind": root.kind, "why": root.why, "fix": root.fix} if root else None}


def to_json(diag: Diagnosis) -> dict[str, Any]:
    g = diag.graph
    return {
        "problems": diag.found_problems,
        "graph": {"nodes": [_node_json(g, n, diag.stuck) for n in sorted(diag.nodes())],
                  "edges": [_edge_json(e) for e in diag.edges()]},
        "deadlocks": [{"nodes": list(d.nodes),
                       "cycles": [[_edge_json(e) for e in c] for c in d.cycles],
                       "story": deadlock_text(g, d, asleep=diag.asleep)}
                      for d in diag.deadlocks],
        "hung": [{"pid": h.task.pid, "tgid": h.task.tgid, "comm": h.task.comm,
                  "state": h.task.state, "wchan": h.task.wchan, "asleep_seconds": h.asleep,
                  "asleep_source": SLEEP_SOURCE, "stuck": h.stuck, "root": h.root,
                  "fix": h.fix,
                  "chain": [_edge_json(e) for e in h.chain], "story": hung_text(g, h)}
                 for h in diag.hung],
        "pipes": [{"reader": p.wait.reader.pid, "comm": p.wait.reader.comm,
                   "read_fd": p.wait.read_fd, "pipe": p.wait.path, "inode": p.wait.inode,
                   "write_end_holders": [{"pid": c.tgid, "comm": c.comm, "fds": list(c.fds),
                                          "relation": c.relation} for c in p.culprits],
                   "story": pipe_text(g, p)} for p in diag.pipes],
        "kernel_reports": [{"title": r.title, "kind": r.kind, "line": r.line}
                           for r in diag.reports],
        "notes": list(dict.fromkeys(diag.notes)),
    }


# -- DOT -----------------------------------------------------------------------
def _dot(text: str) -> str:
    return '"' + for_terminal(text).replace('"', '\\"') + '"'


def to_dot(diag: Diagnosis) -> str:
    """The wait-for graph for Graphviz: stuck nodes red, deadlock edges bold red,
    any-of waits dashed. Names are escaped (no control bytes, quotes escaped)."""
    g = diag.graph
    cycle_edges = {(e.waiter, e.holder, e.kind) for d in diag.deadlocks for c in d.cycles
                   for e in c}
    lines = ["digraph waits {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for n in sorted(diag.nodes()):
        t = g.task(node_pid(n))
        what = "process" if n.startswith("proc:") else "task"
        label = f"{t.comm if t else '?'} ({what} {node_pid(n)})"
        if t and what == "task":
            label += f" {t.state} {t.wchan or ''}"
        if n in g.roots:
            label = who(g, n) if t is None else f"{label}: {g.roots[n].why}"
        attrs = [f"label={_dot(label)}"]
        if n in diag.stuck:
            attrs.append("color=red, fontcolor=red")
        if what == "process":
            attrs.append("shape=ellipse")
        lines.append(f"  {_dot(n)} [{', '.join(attrs)}];")
    for i, e in enumerate(diag.edges()):
        target = e.holder
        if target is None:
            target = f"nobody{i}"
            lines.append(f"  {_dot(target)} [label={_dot(e.note or 'no single holder')}, "
                         "shape=plaintext];")
        label = e.kind if e.kind == "thread" else f"{e.kind}: {e.resource}"
        attrs = [f"label={_dot(label)}"]
        if e.any_of:
            attrs.append("style=dashed")
        if (e.waiter, e.holder, e.kind) in cycle_edges:
            attrs.append("penwidth=2.5, color=red")
        lines.append(f"  {_dot(e.waiter)} -> {_dot(target)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
