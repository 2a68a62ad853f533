"""What the doctor finds: deadlocks, hung tasks, pipes that never reach
end-of-file, and recent kernel reports, computed from one wait-for graph.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import field

from kpeek.diagnose.children import child_wait_edges
from kpeek.diagnose.fanotify import fanotify_edges
from kpeek.diagnose.filelocks import file_lock_edges
from kpeek.diagnose.fuse import fuse_edges, is_idle_server_thread
from kpeek.diagnose.graph import (
    Root,
    WaitEdge,
    WaitGraph,
    elementary_cycles,
    node_pid,
    proc_node,
    strongly_connected,
    stuck_nodes,
    task_node,
)
from kpeek.diagnose.pipes import PipeWait, pipe_edges, relation
from kpeek.diagnose.procinfo import SchedClock, forget_syscalls
from kpeek.diagnose.roots import find_roots
from kpeek.diagnose.userfaultfd import userfaultfd_edges
from kpeek.diagnose.waits import general_edges, is_kernel_thread
from kpeek.kernel.program import Kernel
from kpeek.kernel.sched import RunqueueClock
from kpeek.model import Snapshot, Task
from kpeek.records import record

MAX_CYCLES = 200
PIPE_LIKE = ("pipe", "child", "thread")
IO_WAITS = ("io_schedule", "folio_wait", "wait_on_page", "__folio_lock", "bit_wait_io",
            "blk_", "submit_bio_wait", "wait_for_completion_io", "jbd2", "nfs_")


@record(frozen=True)
class Deadlock:
    """A set of tasks that wait on each other in a circle; ``cycles`` are the
    elementary cycles through them (each a list of edges)."""

    nodes: tuple[str, ...]
    cycles: tuple[tuple[WaitEdge, ...], ...]


@record(frozen=True)
class HungTask:
    """A task in uninterruptible sleep (or stuck for good) and the chain of
    waits behind it, down to ``root``: what it ultimately waits for."""

    task: Task
    asleep: float | None  # seconds since it last ran
    chain: tuple[WaitEdge, ...]
    root: str
    stuck: bool  # can never wake given what we see (part of or behind a deadlock)
    fix: str | None = None  # what would release the root


@record(frozen=True)
class Culprit:
    tgid: int
    comm: str
    fds: tuple[int, ...]
    relation: str | None


@record(frozen=True)
class NeverEof:
    """A reader that waits on a pipe whose write end is held only by
    processes that themselves cannot go on."""

    wait: PipeWait
    culprits: tuple[Culprit, ...]


@record(frozen=True)
class KernelReport:
    title: str
    kind: str
    line: int


@record
class Diagnosis:
    graph: WaitGraph
    stuck: set[str]
    deadlocks: list[Deadlock] = field(default_factory=list)
    hung: list[HungTask] = field(default_factory=list)
    pipes: list[NeverEof] = field(default_factory=list)
    reports: list[KernelReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    asleep: dict[int, float] = field(default_factory=dict)  # tid -> seconds, D-state tasks
    focus: set[str] | None = None  # the nodes on chains through the tasks asked about

    def edges(self) -> list[WaitEdge]:
        """The graph's edges, only those on chains through ``focus`` if set."""
        if self.focus is None:
            return self.graph.edges
        return [e for e in self.graph.edges
                if e.waiter in self.focus and (e.holder is None or e.holder in self.focus)]

    def nodes(self) -> set[str]:
        found = {e.waiter for e in self.edges()} | {e.holder for e in self.edges() if e.holder}
        return found if self.focus is not None else found | self.graph.nodes()

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
            reports=[], notes=self.notes, asleep=self.asleep, focus=self._through(tgids))

    def _through(self, tgids: set[int]) -> set[str]:
        """Every node on a wait chain that passes through one of ``tgids``: what
        they wait on, down to the roots, and who waits on them."""
        start = {task_node(t.pid) for t in self.graph.snapshot.tasks if t.tgid in tgids}
        start |= {proc_node(tgid) for tgid in tgids}
        out, into = defaultdict(list), defaultdict(list)
        for e in self.graph.edges:
            if e.holder:
                out[e.waiter].append(e.holder)
                into[e.holder].append(e.waiter)
        found = set(start)
        for step in (out, into):
            seen, work = set(start), list(start)
            while work:
                for nxt in step.get(work.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        work.append(nxt)
            found |= seen
        return found


def build_graph(snapshot: Snapshot, *, kernel_memory: bool = True,
                kernel: Kernel | None = None,
                asleep: dict[int, float] | None = None,
                min_sleep: float = 1.0) -> tuple[WaitGraph, dict]:
    """The wait-for graph of a snapshot (taken with stacks=True for best
    results). Returns the graph and, per FUSE server node, its idle threads.
    ``kernel`` is the kernel the snapshot was walked in (a dump): its memory
    is where kernel locks are read. ``asleep`` (tid -> seconds, D-state
    tasks) makes a D-state task with no known wait, asleep ``min_sleep`` or
    more, a root: stuck itself."""
    forget_syscalls()
    graph = WaitGraph(snapshot)
    graph.notes.extend(snapshot.notes)
    idle: dict = {}
    find_roots(graph, live=kernel is None)
    if kernel is None:
        file_lock_edges(graph)
    pipe_edges(graph, live=kernel is None)
    if kernel is None:  # these read the live /proc, which knows nothing of a dump
        idle = fuse_edges(graph)
        fanotify_edges(graph)
        userfaultfd_edges(graph)
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
    if kernel is None:  # system calls, fd sets and futex words come from the live /proc
        general_edges(graph)
    waiting = {e.waiter for e in graph.edges}
    for tid, seconds in (asleep or {}).items():
        node = task_node(tid)
        t = graph.task(tid)
        if t is not None and seconds >= min_sleep and node not in waiting \
                and node not in graph.roots:
            graph.roots[node] = Root("stuck", _d_sleep(graph, t) + f" for {seconds:.1f} s",
                                     f"its kernel stack says where: kpeek bt {t.pid}")
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
    clock = SchedClock() if kernel is None else RunqueueClock(kernel)
    asleep = {}
    for t in snapshot.tasks:
        if t.state == "D":
            seconds = clock.asleep_seconds(t)
            if seconds is not None:
                asleep[t.pid] = seconds
    graph, idle = build_graph(snapshot, kernel_memory=kernel_memory, kernel=kernel,
                              asleep=asleep, min_sleep=min_sleep)
    stuck = stuck_nodes(graph, idle)
    # Circles alone (no stopped or frozen root needed): deadlocks and pipes
    # that never end; a wait stuck only on a root is told with that root.
    circular = stuck_nodes(graph, idle, roots=False)
    diag = Diagnosis(graph, stuck, notes=graph.notes, asleep=asleep)
    diag.deadlocks = _deadlocks(graph, circular)
    in_cycle = {n for d in diag.deadlocks for n in d.nodes}
    # A reader on a circle of waits never sees end-of-file; one merely behind
    # such a circle is told as a wait on it.
    diag.pipes = _never_eof(graph, on_circles(graph, circular) - in_cycle)
    never_eof_readers = {task_node(p.wait.reader.pid) for p in diag.pipes}
    diag.hung = _hung(graph, stuck, in_cycle, never_eof_readers, min_sleep, clock, asleep)
    if kernel_log:
        diag.reports, note = recent_reports(kernel)
        if note:
            diag.notes.append(note)
    return diag


def on_circles(graph: WaitGraph, nodes: set[str]) -> set[str]:
    """The nodes among ``nodes`` that lie on a circle of waits among them."""
    succ: dict[str, list[str]] = defaultdict(list)
    for e in graph.edges:
        if e.waiter in nodes and e.holder in nodes:
            succ[e.waiter].append(e.holder)
    found = set()
    for component in strongly_connected(nodes, succ):
        if len(component) > 1 or component[0] in succ.get(component[0], ()):
            found.update(component)
    return found


def _deadlocks(graph: WaitGraph, stuck: set[str]) -> list[Deadlock]:
    cycles = elementary_cycles(graph, within=stuck, limit=MAX_CYCLES)
    # A circle of only pipe and child waits is a pipe that never ends (the
    # missing close()): told as such, not as a lock deadlock.
    cycles = [c for c in cycles if any(e.kind not in PIPE_LIKE for e in c)
              and not _waits_only_on_itself(c)]
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


def _waits_only_on_itself(cycle: list[WaitEdge]) -> bool:
    """A circle from one task back to itself through its own process by an
    any-of wait (a plain futex that any thread may wake): the task cannot
    wake itself, so it waits on its other threads; it is stuck when they
    are, and told with their deadlock or as stuck, not as a deadlock alone."""
    tasks = {e.waiter for e in cycle if e.waiter.startswith("task:")}
    return len(tasks) == 1 and all(e.any_of for e in cycle if e.kind != "thread")


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
          min_sleep: float, clock: SchedClock | RunqueueClock,
          asleep_of: dict[int, float]) -> list[HungTask]:
    """``asleep_of`` holds the D-state sleeps measured right after the clock
    was calibrated: a guest's scheduler clock may drift from CLOCK_MONOTONIC
    while the graph is built (seconds, with BPF), so they are not measured
    again."""
    found = []
    explained = {n: "part of a deadlock (see above)" for n in in_cycle}
    explained |= {n: "reads a pipe that never reaches end-of-file (see above)"
                  for n in eof_readers}
    for t in graph.snapshot.tasks:
        node = task_node(t.pid)
        root = graph.roots.get(node)
        if root is not None and root.kind != "stuck":
            continue  # stopped or frozen: the end of chains, not a wait of its own
        is_d = t.state == "D"
        is_stuck = node in stuck and node not in eof_readers
        if not (is_d or is_stuck) or (is_stuck and not is_d and is_kernel_thread(t)):
            continue
        if node in in_cycle:
            continue  # told with its deadlock
        asleep = asleep_of[t.pid] if t.pid in asleep_of else clock.asleep_seconds(t)
        too_short = asleep is None or asleep < min_sleep
        if is_d and not is_stuck and too_short:
            continue
        chain, root_text, fix = holder_chain(graph, node, explained, stuck)
        found.append(HungTask(t, asleep, tuple(chain), root_text, node in stuck, fix))
    found.sort(key=lambda h: -(h.asleep or 0))
    return found


def holder_chain(graph: WaitGraph, start: str, explained: dict[str, str],
                 stuck: set[str] | None = None,
                 limit: int = 32) -> tuple[list[WaitEdge], str, str | None]:
    """The waits from ``start`` to the node that everything behind it waits
    for, that root in words, and what would release it. ``explained`` maps
    nodes already told as findings (deadlocks, never-ending pipes) to a
    pointer to that finding; ``stuck`` steers the chain toward stuck nodes."""
    out = graph.out_edges()
    stuck = stuck or set()
    chain: list[WaitEdge] = []
    seen = {start}
    node = start
    while len(chain) < limit:
        edges = out.get(node, [])
        if not edges or _root_of(graph, node) is not None:
            break  # a root, or a process held up by a stopped or frozen thread
        edge = min(edges, key=lambda e: _preference(e, explained, stuck, seen, out))
        chain.append(edge)
        if edge.holder is None:
            return chain, edge.note or "no single holder", None
        if edge.holder in explained:
            return chain, f"{who(graph, edge.holder)}: {explained[edge.holder]}", None
        if edge.holder in seen:
            return chain, "a circle of waits that can never end", None
        seen.add(edge.holder)
        node = edge.holder
    return (chain, *describe_root(graph, node))


def _preference(e: WaitEdge, explained: dict[str, str], stuck: set[str], seen: set[str],
                out: dict[str, list[WaitEdge]]) -> int:
    """Which wait a chain follows (lowest first): one already told as a
    finding, then one to a stuck node, then a new node, and last a thread
    that only waits on a futex of its own process (an idle worker: the weakest
    explanation), a node seen already, or no holder at all."""
    if e.holder is None:
        return 6
    if e.holder in explained:
        return 0
    if e.holder in seen:
        return 5
    if e.holder in stuck:
        return 1
    waits = out.get(e.holder, [])
    if e.kind == "thread" and waits and all(w.kind == "futex" and w.any_of for w in waits):
        return 3
    return 2


def _root_of(graph: WaitGraph, node: str) -> tuple[str, Root] | None:
    """The root at ``node``: itself, or for a process one of its threads."""
    if node in graph.roots:
        return node, graph.roots[node]
    if node.startswith("proc:"):
        for t in graph.threads_of(node_pid(node)):
            if task_node(t.pid) in graph.roots:
                return task_node(t.pid), graph.roots[task_node(t.pid)]
    return None


def describe_root(graph: WaitGraph, node: str) -> tuple[str, str | None]:
    """A chain's last node in words, and what would release it (None: not known)."""
    found = _root_of(graph, node)
    if found is not None:
        where, root = found
        if where.startswith(("task:", "proc:")):
            return f"{who(graph, where)}, {root.why}", root.fix
        return root.why, root.fix
    return _describe(graph, node), None


def _describe(graph: WaitGraph, node: str) -> str:
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
        return f"{_who(t)}, {_d_sleep(graph, t)}"
    return f"{_who(t)}, sleeping in {t.wchan or '?'}"


def _d_sleep(graph: WaitGraph, t: Task) -> str:
    frames = (t.wchan or "", *(t.kernel_stack or ())[:3])
    if any(f.startswith(IO_WAITS) for f in frames):
        return f"waiting for I/O in {t.wchan} (the disk or a page lock)"
    return f"in uninterruptible sleep in {t.wchan or '?'} (what it waits for is not visible" + \
        ("" if graph.kernel_memory_read else " without kernel memory") + ")"


def _who(t: Task) -> str:
    kind = "thread" if t.is_thread else "pid"
    return f"{t.comm} ({kind} {t.pid})"


def who(graph: WaitGraph, node: str) -> str:
    """A node in words: "comm (pid N)" or "process comm (pid N)"."""
    if not node.startswith(("task:", "proc:")):
        root = graph.roots.get(node)
        return root.why if root else node
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
    note = None
    if kernel is None:  # the live log keeps reports of hangs long over
        lines = text.splitlines()
        over = [r for r in reports if _hang_is_over(lines[r.start_line:r.start_line + 2])]
        if over:
            reports = [r for r in reports if r not in over]
            note = (f"{len(over)} hung-task reports in the kernel log name tasks that have "
                    "since exited or woken up: left out (kpeek oops shows the whole log)")
    return [KernelReport(r.title, r.kind, r.start_line) for r in reports], note


# The hung task detector's lines: "INFO: task COMM:PID blocked for more than N
# seconds." and (6.16+) "INFO: task COMM:PID <writer> blocked on an rw-semaphore...".
_HUNG_TASK = re.compile(r"INFO: task (.{1,16}?):(\d+)\b[^\n]*? blocked (?:for more than|on )")


def _hang_is_over(lines: list[str]) -> bool:
    """A hung-task report whose task has exited (or whose pid another
    process now has) or is no longer in D state tells of the past."""
    for line in lines:
        m = _HUNG_TASK.search(line)
        if m is None:
            continue
        comm, pid = m.group(1), int(m.group(2))
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return True
        name = raw[raw.find(b"(") + 1:raw.rfind(b")")].decode("utf-8", "replace")
        return name != comm or raw[raw.rfind(b")") + 2:raw.rfind(b")") + 3] != b"D"
    return False


def _ring_text(kernel: Kernel) -> str:
    """The printk ring buffer in ``kernel``'s memory, as dmesg prints it."""
    from kpeek.kernel.printk import format_record, read_log

    return "\n".join(format_record(r) for r in read_log(kernel)) + "\n"


__all__ = ["Deadlock", "Diagnosis", "HungTask", "NeverEof", "build_graph", "diagnose",
           "holder_chain", "who"]
