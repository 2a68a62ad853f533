"""A recorded trace as text, JSON or a self-contained HTML page."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rich.text import Text

from kpeek.render import dot, html
from kpeek.render.diagram import Marks, build_dot
from kpeek.render.fileflags import access_mode
from kpeek.textsafe import for_terminal
from kpeek.trace.changes import StepView
from kpeek.trace.tracer import Trace

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any


def _result(view: StepView) -> str | None:
    s = view.step
    if s.syscall == "exit":
        return None
    return s.result_text


def _call(view: StepView) -> str:
    s = view.step
    if s.syscall == "exit":
        return f"exit (status {s.args[0]})" if s.args else "exit"
    return s.call


def text_lines(trace: Trace, views: list[StepView]) -> list[Text]:
    """One line per step, then its changes indented; names escaped."""
    lines: list[Text] = []
    for i, v in enumerate(views):
        s = v.step
        line = Text(f"{i:4d} ", style="dim")
        line.append(f"[{s.tgid if s.pid == s.tgid else f'{s.tgid}/{s.pid}'} "
                    f"{for_terminal(s.comm)}] ", style="cyan")
        line.append(for_terminal(_call(v)), style="bold")
        if _result(v) is not None:
            line.append(f" = {for_terminal(_result(v) or '')}")
        lines.append(line)
        for c in v.changes:
            lines.append(Text(f"       {c}", style="bold red" if "keeps" in c else "yellow"))
    tail = f"exit status {trace.exit_status}" if trace.exit_status is not None else "no exit status"
    if trace.stopped:
        tail += f" ({trace.stopped})"
    lines.append(Text(tail, style="dim"))
    for n in trace.notes:
        lines.append(Text(f"note: {for_terminal(n)}", style="dim"))
    return lines


def _tables(view: StepView) -> dict[str, Any]:
    snap = view.step.snapshot
    processes = []
    for t in sorted(snap.processes(), key=lambda t: t.pid):
        processes.append({
            "pid": t.pid,
            "ppid": t.ppid,
            "comm": t.comm,
            "fds": [
                {"fd": d.fd, "cloexec": d.cloexec, "file": view.labels.get(d.open_file)}
                for d in snap.fds_of(t.tgid)
            ],
        })
    files = []
    for fid, f in sorted(snap.open_files.items(), key=lambda kv: int(view.labels[kv[0]][1:])):
        inode = snap.inodes.get(f.inode)
        files.append({
            "file": view.labels[fid],
            "path": f.path,
            "pos": f.pos,
            "flags": f.flags,
            "access": access_mode(f.flags),
            "holders": len(snap.holders(fid)),
            "inode": f.inode,
            "type": inode.type if inode else None,
        })
    return {"processes": processes, "open_files": files}


def to_json(trace: Trace, views: list[StepView]) -> dict[str, Any]:
    """The payload of ``kpeek trace --json`` (schema kpeek.trace)."""
    return {
        "command": trace.command,
        "exit_status": trace.exit_status,
        "stopped": trace.stopped,
        "notes": trace.notes,
        "steps": [
            {
                "index": i,
                "pid": v.step.pid,
                "tgid": v.step.tgid,
                "comm": v.step.comm,
                "syscall": v.step.syscall,
                "args": list(v.step.args),
                "call": _call(v),
                "result": v.step.result,
                "result_text": _result(v),
                "elapsed": round(v.step.elapsed, 6),
                "changes": v.changes,
                **_tables(v),
            }
            for i, v in enumerate(views)
        ],
    }


def step_svg(view: StepView) -> str:
    snap = view.step.snapshot
    tgids = [t.tgid for t in snap.processes()]
    marks = Marks(
        changed_fds=view.marks.changed_fds,
        changed_files=view.marks.changed_files,
        changed_processes=view.marks.changed_processes,
        file_labels=view.labels,
    )
    return html.inline_svg(dot.run_dot(build_dot(snap, tgids, marks), "svg"))


def to_html(trace: Trace, views: list[StepView]) -> str:
    """One page to step through the trace; every diagram laid out by Graphviz."""
    # Layout dominates: two dot processes at a time (machines have few cores).
    with ThreadPoolExecutor(max_workers=2) as pool:
        svgs = list(pool.map(step_svg, views))
    steps = []
    for i, (v, svg) in enumerate(zip(views, svgs, strict=True)):
        steps.append({
            "index": i,
            "pid": v.step.pid,
            "comm": for_terminal(v.step.comm),
            "call": for_terminal(_call(v)),
            "result": for_terminal(_result(v)) if _result(v) is not None else None,
            "failed": v.step.failed,
            "changes": v.changes,
            "svg": svg,
        })
    title = "kpeek trace: " + " ".join(trace.command)
    return html.trace_page(title, steps)
