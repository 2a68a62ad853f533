"""The wait-for graph: who waits on whom, and which waits can never end.

Nodes are tasks (``task:TID``) and processes (``proc:TGID``). A process node
stands for "any thread of this process": file locks and pipe ends belong to
processes, not threads, and a FUSE request is answered by some thread of the
server. Edges come from small finders (filelocks, pipes, fuse, kernlocks,
children), each one kind of wait.

Two kinds of wait matter for deciding whether a wait can end:

* all-of (``any_of=False``): a lock wait; the waiter runs again only when
  this holder lets go.
* any-of (``any_of=True``): a pipe reader wakes when any writer writes (or
  all close), a parent in wait4 when any child exits, a FUSE client when
  any busy server thread answers.

:func:`stuck_nodes` computes the greatest set of nodes that can never wake
under those rules (a greatest fixpoint): a cycle of lock waits is stuck; a
reader whose only writer is itself is stuck; a reader with one live writer
sleeping elsewhere is not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import field

from kpeek.model import Snapshot, Task
from kpeek.records import record


def task_node(tid: int) -> str:
    return f"task:{tid}"


def proc_node(tgid: int) -> str:
    return f"proc:{tgid}"


def node_pid(node: str) -> int:
    """The pid of a task or process node; -1 for the other nodes (a frozen
    file system, an end nobody holds: see :class:`Root`)."""
    kind, _, rest = node.partition(":")
    return int(rest) if kind in ("task", "proc") else -1


def is_task_or_proc(node: str) -> bool:
    return node.startswith(("task:", "proc:"))


@record(frozen=True, slots=True)
class Root:
    """A node that cannot make progress by itself: a task stopped by a
    signal, stopped by its tracer, in a frozen cgroup, or stuck itself; a
    frozen file system; the other end of a pipe or socket that nobody holds.
    ``why`` says which, in words; ``fix`` what would release it."""

    kind: str  # stopped traced frozen-cgroup stuck frozen-fs nobody
    why: str
    fix: str
    by: int | None = None  # the tracer's pid, for "traced"


@record(frozen=True, slots=True)
class WaitEdge:
    """``waiter`` cannot go on until ``holder`` acts on ``resource``.

    ``holder`` is None when the resource has no single holder (a
    reader-owned rwsem, a mutex whose owner word holds only flag bits):
    ``note`` then says so. ``certain`` is False for edges inferred from
    circumstantial evidence (stacks and syscalls, without kernel memory).
    """

    waiter: str
    holder: str | None
    kind: str  # flock posix ofd lease pipe fuse child thread mutex rwsem semaphore inode-lock
    resource: str  # the thing waited for, in words
    any_of: bool = False
    path: str | None = None
    detail: str | None = None
    note: str | None = None
    certain: bool = True
    source: str = ""  # where the evidence came from
    relation: str | None = None  # how the holder relates to it ("the write end held by")


@record
class WaitGraph:
    """Edges over a snapshot's tasks, with what could not be seen."""

    snapshot: Snapshot
    edges: list[WaitEdge] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pipe_waits: list = field(default_factory=list)  # pipes.PipeWait, filled by pipe_edges
    kernel_memory_read: bool = False  # set when kernel locks could be examined
    roots: dict[str, Root] = field(default_factory=dict)  # node -> why it cannot go on

    def __post_init__(self) -> None:
        self._seen: set[WaitEdge] = set(self.edges)
        self._tasks = {t.pid: t for t in self.snapshot.tasks}
        self._threads: dict[int, list[Task]] = defaultdict(list)
        for t in self.snapshot.tasks:
            self._threads[t.tgid].append(t)

    # -- building --------------------------------------------------------
    def add(self, edge: WaitEdge) -> None:
        if edge not in self._seen:
            self._seen.add(edge)
            self.edges.append(edge)

    def extend(self, edges: Iterable[WaitEdge]) -> None:
        for e in edges:
            self.add(e)

    def link_processes(self) -> None:
        """Add proc -> thread edges for every process node that is waited on.

        A process acts when any of its threads does, so these edges are
        any-of; only threads that themselves wait are linked (a thread with
        no known wait is free to act, which :func:`stuck_nodes` accounts for).
        """
        targets = {e.holder for e in self.edges if e.holder and e.holder.startswith("proc:")}
        waiting = {e.waiter for e in self.edges}
        for node in sorted(targets):
            for t in self.threads_of(node_pid(node)):
                if task_node(t.pid) in waiting:
                    self.add(WaitEdge(node, task_node(t.pid), "thread", "its thread", any_of=True))

    # -- queries ---------------------------------------------------------
    def task(self, tid: int) -> Task | None:
        return self._tasks.get(tid)

    def threads_of(self, tgid: int) -> list[Task]:
        return self._threads.get(tgid, [])

    def out_edges(self) -> dict[str, list[WaitEdge]]:
        out: dict[str, list[WaitEdge]] = defaultdict(list)
        for e in self.edges:
            out[e.waiter].append(e)
        return out

    def all_descriptors_seen(self) -> bool:
        """Whether every process's descriptor table was read: only then can
        "no process holds the other end" be said."""
        # procfs: "descriptors of N processes not readable"; bpf, for a process
        # the iterators do not visit: "pid N: descriptors not readable".
        return not any("descriptors" in n and "not readable" in n for n in self.snapshot.notes)

    def nodes(self) -> set[str]:
        found = {e.waiter for e in self.edges}
        found |= {e.holder for e in self.edges if e.holder}
        return found


def stuck_nodes(graph: WaitGraph, ignore_idle: dict[str, set[int]] | None = None,
                roots: bool = True) -> set[str]:
    """Nodes that can never wake again, given the edges we know.

    A root (``graph.roots``: stopped, frozen, nobody) is stuck. A task node
    with all-of edges is stuck when any holder is stuck (and every all-of
    edge has a holder); with only any-of edges, when every target is stuck
    (an any-of edge without a holder is a waker outside what we see: never
    stuck). A process node is stuck when every thread is stuck, except
    threads listed in ``ignore_idle[node]`` (FUSE threads idle in the
    request read cannot answer a request already taken). Tasks with no
    known wait are never stuck. Greatest fixpoint: start from "all waiting
    nodes stuck" and clear nodes until nothing changes. ``roots=False``
    leaves the roots out: what is stuck by circles of waits alone.
    """
    ignore_idle = ignore_idle or {}
    out = graph.out_edges()
    fixed = set(graph.roots) if roots else set()
    stuck = {n for n in graph.nodes() if n in out or n.startswith("proc:")} | fixed

    def still_stuck(node: str) -> bool:
        if node in fixed:
            return True
        if node.startswith("proc:"):
            idle = ignore_idle.get(node, set())
            threads = [t for t in graph.threads_of(node_pid(node)) if t.pid not in idle]
            if not threads:
                return False
            return all(task_node(t.pid) in stuck for t in threads)
        edges = out.get(node, [])
        if not edges:
            return False
        all_of = [e for e in edges if not e.any_of]
        any_of = [e for e in edges if e.any_of]
        if all_of:
            if any(e.holder is None for e in all_of):
                return False  # no single holder: we cannot say it never ends
            return any(e.holder in stuck for e in all_of)
        return all(e.holder in stuck for e in any_of)

    # Worklist: when a node is cleared, only the nodes that wait on it (and a
    # thread's process) need another look, so the fixpoint stays linear.
    waiters_of: dict[str, set[str]] = defaultdict(set)
    for e in graph.edges:
        if e.holder:
            waiters_of[e.holder].add(e.waiter)
    work = sorted(stuck)
    while work:
        node = work.pop()
        if node not in stuck or still_stuck(node):
            continue
        stuck.discard(node)
        work.extend(waiters_of.get(node, ()))
        if node.startswith("task:"):
            t = graph.task(node_pid(node))
            if t is not None:
                work.append(proc_node(t.tgid))
    return stuck


def strongly_connected(nodes: Iterable[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(succ.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(succ.get(nxt, ()))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


def elementary_cycles(
    graph: WaitGraph, within: set[str] | None = None, limit: int = 100
) -> list[list[WaitEdge]]:
    """Every simple cycle (as its edges), at most ``limit``, Johnson-style.

    Cycles are searched one strongly connected component at a time, each
    started from its smallest node and allowed to visit only larger nodes,
    so every cycle is found once. ``within`` restricts the nodes.
    """
    out = graph.out_edges()
    succ: dict[str, list[str]] = defaultdict(list)
    for node, edges in out.items():
        if within is not None and node not in within:
            continue
        for e in edges:
            if e.holder and (within is None or e.holder in within):
                succ[node].append(e.holder)
    cycles: list[list[WaitEdge]] = []
    nodes = set(succ) | {n for targets in succ.values() for n in targets}
    for component in strongly_connected(nodes, succ):
        members = set(component)
        if len(component) == 1 and component[0] not in succ.get(component[0], []):
            continue
        for start in component:
            _cycles_from(start, members, out, cycles, limit)
            if len(cycles) >= limit:
                return cycles
            members.discard(start)
    return cycles


def _cycles_from(
    start: str,
    allowed: set[str],
    out: dict[str, list[WaitEdge]],
    cycles: list[list[WaitEdge]],
    limit: int,
) -> None:
    path: list[WaitEdge] = []
    on_path = {start}
    work: list[Iterator[WaitEdge]] = [iter(out.get(start, ()))]
    while work and len(cycles) < limit:
        edge = next(work[-1], None)
        if edge is None:
            work.pop()
            if path:
                on_path.discard(path.pop().holder or "")
            continue
        nxt = edge.holder
        if nxt is None or nxt not in allowed:
            continue
        if nxt == start:
            cycles.append([*path, edge])
            continue
        if nxt in on_path or len(path) > 64:
            continue
        path.append(edge)
        on_path.add(nxt)
        work.append(iter(out.get(nxt, ())))
