"""What the doctor finds: deadlocks, hung tasks, pipes that never reach
end-of-file, and recent kernel reports, computed from one wait-for graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kpeek.diagnose.children import child_wait_edges
from kpeek.diagnose.filelocks import file_lock_edges
from kpeek.diagnose.fuse import fuse_edges, is_idle_server_thread
from kpeek.diagnose.graph import (
    WaitEdge,
    WaitGraph,
    elementary_cycles,
    node_pid,
    strongly_connected,
    stuck_nodes,
    task_node,
)
from kpeek.diagnose.pipes import PipeWait, pipe_edges, relation
from kpeek.diagnose.procinfo import SchedClock
from kpeek.kernel.program import Kernel
from kpeek.kernel.sched import RunqueueClock
from kpeek.model import Snapshot, Task

MAX_CYCLES = 200
PIPE_LIKE = ("pipe", "child", "thread")
IO_WAITS = ("io_schedule", "folio_wait", "wait_on_page", "__folio_lock", "bit_wait_io",
            "blk_", "submit_bio_wait", "wait_for_completion_io", "jbd2", "nfs_")


@dataclass(frozen=True)
class Deadlock:
    """A set of tasks that wait on each other in a circle; ``cycles`` are the
    elementary cycles through them (each a list of edges)."""

    nodes: tuple[str, ...]
    cycles: tuple[tuple[WaitEdge, ...], ...]


@dataclass(frozen=True)
class HungTask:
    """A task in uninterruptible sleep (or stuck for good) and the chain of
    waits behind it, down to ``root``: what it ultimately waits for."""

    task: Task
    asleep: float | None  # seconds since it last ran
    chain: tuple[WaitEdge, ...]
    root: str
    stuck: bool  # can never wake given what we see (part of or behind a deadlock)


@dataclass(frozen=True)
class Culprit:
    tgid: int
    comm: str
    fds: tuple[int, ...]
    relation: str | None


@dataclass(frozen=True)
class NeverEof:
    """A reader that waits on a pipe whose write end is held only by
    processes that themselves cannot go on."""

    wait: PipeWait
    culprits: tuple[Culprit, ...]


@dataclass(frozen=True)
class KernelReport:
    title: str
    kind: str
    line: int


@dataclass
class Diagnosis:
    graph: WaitGraph
    stuck: set[str]
    deadlocks: list[Deadlock] = field(default_factory=list)
    hung: list[HungTask] = field(default_factory=list)
    pipes: list[NeverEof] = field(default_factory=list)
    reports: list[KernelReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    asleep: dict[int, float] = field(default_factory=dict)  # tid -> seconds, D-state tasks

    @property
    def found_problems(self) -> bool:
        return bool(self.deadlocks or self.hung or self.pipes or self.reports)

    def tgid_of(self, node: str) -> int:
        t = self.graph.task(node_pid(node))
        return t.tgid if t else node_pid(node)

    def restricted_to(self, tgids: set[int]) -> Diagnosis:
        """Only the findings that involve one of these processes (kernel
        reports are dropped: they name no process we could match)."""
        def touches(nodes: list[str]) -> bool:
            return any(self.tgid_of(n) in tgids for n in nodes)

        def chain_nodes(edges) -> list[str]:
            return [n for e in edges for n in (e.waiter, e.holder) if n]

        hung = [h for h in self.hung if h.task.tgid in tgids or touches(chain_nodes(h.chain))]
        # Whatever those chains run into is part of the answer too.
        tgids = tgids | {self.tgid_of(n) for h in hung for n in chain_nodes(h.chain)}
        return Diagnosis(
            self.graph, self.stuck,
            deadlocks=[d for d in self.deadlocks if touches(list(d.nodes))],
            hung=hung,
            pipes=[p for p in self.pipes
                   if p.wait.reader.tgid in tgids or any(c.tgid in tgids for c in p.culprits)],
            reports=[], notes=self.notes, asleep=self.asleep)


def build_graph(snapshot: Snapshot, *, kernel_memory: bool = True,
                kernel: Kernel | None = None) -> tuple[WaitGraph, dict]:
    """The wait-for graph of a snapshot (taken with stacks=True for best
    results). Returns the graph and, per FUSE server node, its idle threads.
    ``kernel`` is the kernel the snapshot was walked in (a dump): its memory
    is where kernel locks are read."""
    graph = WaitGraph(snapshot)
    graph.notes.extend(snapshot.notes)
    idle: dict = {}
    if kernel is None:
        file_lock_edges(graph)
    pipe_edges(graph)
    if kernel is None:  # these read the live /proc, which knows nothing of a dump
        idle = fuse_edges(graph)
        child_wait_edges(graph)
    else:
        graph.notes.append(f"{kernel.origin}: file-lock, FUSE and child waits are read from "
                           "the live /proc and are not seen in a dump")
    if kernel_memory:
        from kpeek.diagnose.kernlocks import kernel_lock_edges

        kernel_lock_edges(graph, kernel)
    elif any(t.state == "D" for t in snapshot.tasks):
        graph.notes.append("kernel memory not read (--no-kernel-memory): the kernel locks "
                           "that D-state tasks sleep on are not seen")
    graph.link_processes()
    return graph, idle


def diagnose(
    snapshot: Snapshot,
    *,
    min_sleep: float = 1.0,
    kernel_memory: bool = True,
    kernel_log: bool = True,
    kernel: Kernel | None = None,
) -> Diagnosis:
    """Every finding on ``snapshot``. ``min_sleep`` is how long (seconds) a
    D-state task must have slept to count as hung when nothing proves it
    stuck (short D sleeps are normal disk waits)."""
    graph, idle = build_graph(snapshot, kernel_memory=kernel_memory, kernel=kernel)
    stuck = stuck_nodes(graph, idle)
    diag = Diagnosis(graph, stuck, notes=graph.notes)
    diag.deadlocks = _deadlocks(graph, stuck)
    in_cycle = {n for d in diag.deadlocks for n in d.nodes}
    diag.pipes = _never_eof(graph, stuck - in_cycle)  # a reader in a deadlock is told there
    never_eof_readers = {task_node(p.wait.reader.pid) for p in diag.pipes}
    clock = SchedClock() if kernel is None else RunqueueClock(kernel)
    diag.hung = _hung(graph, stuck, in_cycle, never_eof_readers, min_sleep, diag.asleep, clock)
    if kernel_log:
        diag.reports, note = recent_reports(kernel)
        if note:
            diag.notes.append(note)
    return diag


def _deadlocks(graph: WaitGraph, stuck: set[str]) -> list[Deadlock]:
    cycles = elementary_cycles(graph, within=stuck, limit=MAX_CYCLES)
    # A circle of only pipe and child waits is a pipe that never ends (the
    # missing close()): told as such, not as a lock deadlock.
    cycles = [c for c in cycles if any(e.kind not in PIPE_LIKE for e in c)]
    if len(cycles) >= MAX_CYCLES:
        graph.notes.append(f"more than {MAX_CYCLES} wait cycles: only the first are told")
    succ: dict[str, list[str]] = {}
    for c in cycles:
        for e in c:
            succ.setdefault(e.waiter, []).append(e.holder or "")
    found = []
    for component in strongly_connected(list(succ), succ):
        members = set(component)
        mine = [c for c in cycles if c[0].waiter in members]
        if mine:
            found.append(Deadlock(tuple(component), tuple(tuple(_rotate(c)) for c in mine)))
    return found


def _rotate(cycle: list[WaitEdge]) -> list[WaitEdge]:
    """Start a cycle's story at a process's hop to its thread (told as one
    line with the thread's wait), else at a task."""
    for i, e in enumerate(cycle):
        if e.kind == "thread":
            return cycle[i:] + cycle[:i]
    for i, e in enumerate(cycle):
        if e.waiter.startswith("task:"):
            return cycle[i:] + cycle[:i]
    return cycle


def _never_eof(graph: WaitGraph, stuck: set[str]) -> list[NeverEof]:
    snapshot = graph.snapshot
    found = []
    for w in graph.pipe_waits:
        if task_node(w.reader.pid) not in stuck or not w.writers:
            continue
        by_process: dict[int, list[int]] = {}
        for d in w.writers:
            by_process.setdefault(d.tgid, []).append(d.fd)
        culprits = []
        for tgid, fds in sorted(by_process.items()):
            task = graph.task(tgid)
            culprits.append(Culprit(tgid, task.comm if task else "?", tuple(fds),
                                    relation(snapshot, w.reader, tgid)))
        found.append(NeverEof(w, tuple(culprits)))
    return found


def _hung(graph: WaitGraph, stuck: set[str], in_cycle: set[str], eof_readers: set[str],
          min_sleep: float, asleep_of: dict[int, float],
          clock: SchedClock | RunqueueClock) -> list[HungTask]:
    found = []
    explained = {n: "part of a deadlock (see above)" for n in in_cycle}
    explained |= {n: "reads a pipe that never reaches end-of-file (see above)"
                  for n in eof_readers}
    for t in graph.snapshot.tasks:
        node = task_node(t.pid)
        is_d = t.state == "D"
        is_stuck = node in stuck and node not in eof_readers
        if not (is_d or is_stuck):
            continue
        asleep = clock.asleep_seconds(t)
        if asleep is not None and is_d:
            asleep_of[t.pid] = asleep
        if node in in_cycle:
            continue  # told with its deadlock
        too_short = asleep is None or asleep < min_sleep
        if is_d and not is_stuck and too_short:
            continue
        chain, root = holder_chain(graph, node, explained)
        found.append(HungTask(t, asleep, tuple(chain), root, node in stuck))
    found.sort(key=lambda h: -(h.asleep or 0))
    return found


def holder_chain(graph: WaitGraph, start: str, explained: dict[str, str],
                 limit: int = 32) -> tuple[list[WaitEdge], str]:
    """The waits from ``start`` to the node that everything behind it waits
    for, and that root in words. ``explained`` maps nodes already told as
    findings (deadlocks, never-ending pipes) to a pointer to that finding."""
    out = graph.out_edges()
    chain: list[WaitEdge] = []
    seen = {start}
    node = start
    while len(chain) < limit:
        edges = out.get(node, [])
        if not edges:
            break
        # Prefer an edge with a holder, and among those one already explained.
        edge = next((e for e in edges if e.holder and e.holder in explained), None) or next(
            (e for e in edges if e.holder), edges[0])
        chain.append(edge)
        if edge.holder is None:
            return chain, edge.note or "no single holder"
        if edge.holder in explained:
            return chain, f"{who(graph, edge.holder)}: {explained[edge.holder]}"
        if edge.holder in seen:
            return chain, "a circle of waits that can never end"
        seen.add(edge.holder)
        node = edge.holder
    return chain, describe_root(graph, node)


def describe_root(graph: WaitGraph, node: str) -> str:
    pid = node_pid(node)
    if node.startswith("proc:"):
        threads = graph.threads_of(pid)
        if not threads:
            return f"process {pid}, which is gone"
        running = [t for t in threads if t.state == "R"]
        if running:
            return f"{_who(running[0])}, which is running"
        stopped = [t for t in threads if t.state in "Tt"]
        if stopped:
            return f"{_who(stopped[0])}, which is stopped (SIGSTOP or a tracer)"
        busy = [t for t in threads if not is_idle_server_thread(t)]
        sample = busy[0] if busy else threads[0]
        return f"{_who(sample)}, sleeping in {sample.wchan or '?'} (nothing known blocks it)"
    t = graph.task(pid)
    if t is None:
        return f"task {pid}, which is gone"
    if t.state == "R":
        return f"{_who(t)}, which is running"
    if t.state in "Tt":
        return f"{_who(t)}, which is stopped (SIGSTOP or a tracer)"
    if t.state == "D":
        frames = (t.wchan or "", *(t.kernel_stack or ())[:3])
        if any(f.startswith(IO_WAITS) for f in frames):
            return f"{_who(t)}, waiting for I/O in {t.wchan} (the disk or a page lock)"
        return f"{_who(t)}, in uninterruptible sleep in {t.wchan or '?'} (what it waits for is " \
               "not visible" + ("" if graph.kernel_memory_read else " without kernel memory") + ")"
    return f"{_who(t)}, sleeping in {t.wchan or '?'}"


def _who(t: Task) -> str:
    kind = "thread" if t.is_thread else "pid"
    return f"{t.comm} ({kind} {t.pid})"


def who(graph: WaitGraph, node: str) -> str:
    """A node in words: "comm (pid N)" or "process comm (pid N)"."""
    pid = node_pid(node)
    if node.startswith("proc:"):
        t = graph.task(pid)
        return f"{t.comm} (pid {pid})" if t else f"process {pid}"
    t = graph.task(pid)
    return _who(t) if t else f"task {pid}"


def recent_reports(kernel: Kernel | None = None) -> tuple[list[KernelReport], str | None]:
    """Kernel reports (oops, BUG, WARNING, hung task...) in the kernel log: the
    live one, or the printk ring buffer in ``kernel``'s memory (a dump's)."""
    try:
        from kpeek.reports import parse_reports, read_kmsg
    except ImportError:
        return [], "the kernel log was not read (kpeek.reports.read_kmsg is not available)"
    try:
        text = read_kmsg() if kernel is None else _ring_text(kernel)
    except Exception as e:  # the log is optional: say why it is missing
        return [], f"the kernel log could not be read ({e})"
    reports = parse_reports(text)
    return [KernelReport(r.title, r.kind, r.start_line) for r in reports], None


def _ring_text(kernel: Kernel) -> str:
    """The printk ring buffer in ``kernel``'s memory, as dmesg prints it."""
    from kpeek.kernel.printk import format_record, read_log

    return "\n".join(format_record(r) for r in read_log(kernel)) + "\n"


__all__ = ["Deadlock", "Diagnosis", "HungTask", "NeverEof", "build_graph", "diagnose",
           "holder_chain", "who"]
