"""kpeek doctor: who waits on whom; deadlocks, hung tasks, pipes that never
reach end-of-file, and recent kernel reports. Exit 1 when it finds any."""

from __future__ import annotations

import argparse
import dataclasses
import os

from kpeek import jsonout
from kpeek.commands.common import add_json, cyclic_gc_off, seconds
from kpeek.errors import EXIT_FINDINGS, EXIT_OK, KpeekError, UsageError, os_reason
from kpeek.model import Snapshot
from kpeek.targets import core_path, open_kernel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="explain every stuck task: deadlocks, hung tasks, pipes",
                       description=__doc__)
    p.add_argument("pid", type=int, nargs="*",
                   help="only findings that involve these processes (default: all)")
    add_json(p)
    p.add_argument("--dot", metavar="FILE", help="write the wait-for graph for Graphviz to FILE")
    p.add_argument("--min-sleep", type=seconds(0, 1e9), default=1.0, metavar="SECONDS",
                   help="a D-state task counts as hung after this long asleep, and becomes "
                        "the stuck root of the waits behind it (default 1); waits on a "
                        "stopped or frozen root are told at once")
    p.add_argument("--no-kernel-memory", action="store_true",
                   help="do not read kernel memory with BPF (kernel locks stay unseen; "
                        "the snapshot comes from /proc)")
    p.add_argument("--source", choices=("auto", "bpf", "procfs"), default="auto",
                   help="where tasks, descriptors, stacks and system calls come from: bpf "
                        "(one iterator pass, needs root), procfs, or auto: bpf where it "
                        "loads, else procfs with a note saying why")
    p.add_argument("--no-kernel-log", action="store_true", help="skip the kernel log")
    p.add_argument("--explain-sources", action="store_true",
                   help="say which facts come from where on this kernel (BPF, /proc, stack "
                        "scan) and what is unavailable and why; then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.explain_sources:
        from kpeek.commands.sources import explain

        return explain(args)
    with cyclic_gc_off():
        return _diagnose(args)


def _diagnose(args: argparse.Namespace) -> int:
    from kpeek.diagnose.findings import diagnose
    from kpeek.diagnose.story import all_text, to_dot, to_json

    kernel = None
    if core_path(args) is not None:  # a dump: every fact from its kernel objects
        from kpeek.sources import memwalk

        kernel = open_kernel(args, "doctor")
        snapshot = memwalk.take_snapshot(kernel, stacks=True)
    else:
        snapshot = live_snapshot("procfs" if args.no_kernel_memory else args.source)
    diag = diagnose(snapshot, min_sleep=args.min_sleep,
                    kernel_memory=not args.no_kernel_memory,
                    kernel_log=not args.no_kernel_log and not args.pid,
                    kernel=kernel)
    if args.pid:
        missing = [p for p in args.pid if not any(t.tgid == p for t in snapshot.tasks)]
        if missing:
            raise UsageError(f"no such process: {', '.join(map(str, missing))}")
        diag = diag.restricted_to(set(args.pid))
    if args.dot:
        try:
            with open(args.dot, "w", encoding="utf-8") as f:
                f.write(to_dot(diag))
        except OSError as e:
            raise UsageError(f"cannot write {args.dot}: {e.strerror}") from e
    blind = kernel is None and os.geteuid() != 0  # a dump shows everything to anyone
    if args.json:
        doc = to_json(diag)
        doc["source"] = snapshot.source
        if blind:
            doc["notes"].insert(0, BLIND)
        jsonout.emit("doctor", doc)
    else:
        _print(diag, all_text(diag), blind)
    return EXIT_FINDINGS if diag.found_problems else EXIT_OK


def live_snapshot(source: str) -> Snapshot:
    """The live system with stacks: from BPF iterators (tasks with their
    stacks, wait channels and system calls, then descriptors: two iterator
    runs) where they load, else from /proc, and then a note says why."""
    from kpeek.sources import BLOCKED, procfs

    if source == "procfs":
        return procfs.take_snapshot(stacks=BLOCKED)
    from kpeek.sources.bpf import snapshot as bpf

    try:
        # The waits of tasks in S state are told by their wait channels and
        # system calls; only D-state sleeps need the whole stack.
        return bpf.take_snapshot(stacks=BLOCKED)
    except (KpeekError, OSError) as e:
        if source == "bpf":
            raise
        why = os_reason(e) if isinstance(e, OSError) else str(e)
        snap = procfs.take_snapshot(stacks=BLOCKED)
        note = (f"the BPF source failed ({why}): tasks, descriptors, stacks and system calls "
                "were read from /proc instead")
        return dataclasses.replace(snap, notes=(note, *snap.notes))


BLIND = ("not root: other users' kernel stacks and descriptors, and kernel memory, are not "
         "visible, so their waits are unknown (run as root to see them)")


def _print(diag, blocks: list[list[str]], blind: bool) -> None:
    from kpeek.render import text  # rich: not imported for --json

    out = text.console()
    if blind:
        out.print(f"note: {BLIND}", style="yellow")
    if not blocks:
        among = " among what could be seen" if blind else ""
        out.print(f"[green]No problems found[/green]{among}: no deadlock, no hung task, "
                  "no pipe that never ends, no kernel report.")
    for block in blocks:
        head, *rest = block
        out.print(text.name(head), style="bold red")
        for line in rest:
            out.print(text.name(line))
        out.print()
    edges = len(diag.edges())
    snap = diag.graph.snapshot
    out.print(f"[dim]{len(snap.tasks)} tasks examined ({snap.source} source), {edges} waits "
              "in the wait-for graph[/dim]")
    for note in dict.fromkeys(diag.notes):
        out.print(text.name(f"note: {note}"), style="dim")
