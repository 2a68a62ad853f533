"""The three file tables drawn: descriptor tables, open file table, inode table.

One column per table, laid out left to right by Graphviz: each process box
lists its descriptors; an arrow goes from each descriptor to its open file
(offset, access mode, flags, reference count where the source knows it) and
from each open file to its inode (type, path). Descriptors that share one
open file (after fork or dup) point at one entry; two open() calls of one
file give two entries pointing at one inode. Pipe ends say which processes
hold them, and a write end that keeps a reader from end-of-file is drawn in
red (see diagram_pipes for the exact rule). Processes are boxed by PID
namespace, each box labelled like a container.

Node names in the DOT source are generated (p3, f12, i7), never taken from
the kernel; every untrusted name goes through dot.label_text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import field

from kpeek.errors import UsageError
from kpeek.model import OpenFile, Snapshot, Task
from kpeek.records import record
from kpeek.render import dot
from kpeek.render.diagram_pipes import PIPE_TYPES, BlockingEnd, blocking_write_ends
from kpeek.render.fdfacts import lock_text, socket_name, summary
from kpeek.render.fileflags import access_mode, flag_names

FORMATS = ("dot", "svg", "html")

_PATH_LIMIT = 44
_FACTS_LIMIT = 60
# Past this many open files, entries become one line each: a 20-process,
# 200-fd drawing stays a few screens tall instead of a poster.
COMPACT_AFTER = 24
LARGE_AFTER = 1000  # descriptors; past this, layout effort is bounded
_HOLDERS_SHOWN = 4  # pipe ends list this many holder processes by name
_COMM_LIMIT = 24
_FONT = "Helvetica"
_HEADER = "#dbe6f4"
_NS_FILL = "#f6f8fb"
_CHANGED = "#ffe680"
_BLOCKING = "#ffd2cc"
_RED = "#c0392b"
_TYPE_COLOURS = {
    "regular": "#eef5ea",
    "dir": "#eef5ea",
    "pipe": "#fdf0dc",
    "fifo": "#fdf0dc",
    "socket": "#efe8f7",
    "chardev": "#f0f0f0",
}


@record(frozen=True)
class Marks:
    """What to emphasise in one drawing (used by trace to show a step's changes).

    ``changed_fds`` are (tgid, fd) slots, ``changed_files`` open-file ids;
    ``file_labels`` replaces the short label shown on open-file entries.
    """

    changed_fds: frozenset[tuple[int, int]] = frozenset()
    changed_files: frozenset[str] = frozenset()
    changed_processes: frozenset[int] = frozenset()
    file_labels: Mapping[str, str] = field(default_factory=dict)
    caption: str | None = None


def render_diagram(snapshot: Snapshot, tgids: Sequence[int], fmt: str) -> bytes:
    """The diagram of processes ``tgids`` in ``snapshot`` as DOT, SVG or HTML bytes.

    Raises UsageError for an unknown format, NotSupported when Graphviz is
    missing (svg, html) and KpeekError when Graphviz fails.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown diagram format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = build_dot(snapshot, tgids)
    if fmt == "dot":
        return source.encode("ascii")
    svg = dot.run_dot(source, "svg")
    if fmt == "svg":
        return svg
    from kpeek.render import html

    return html.diagram_page(svg, title=_title(snapshot, tgids)).encode("utf-8")


def _title(snap: Snapshot, tgids: Sequence[int]) -> str:
    shown = [t for t in snap.processes() if t.tgid in set(tgids)]
    if len(shown) == 1:
        return f"kpeek files {shown[0].pid} ({shown[0].comm})"
    return f"kpeek files: {len(shown)} processes"


def host_pidns(snap: Snapshot) -> int | None:
    """The initial PID namespace: where every task's ns_pid equals its pid."""
    by_ns: dict[int, list[Task]] = defaultdict(list)
    for t in snap.processes():
        by_ns[t.pidns].append(t)
    for ns, tasks in by_ns.items():
        if all(t.ns_pid == t.pid for t in tasks):
            return ns
    return None


class _Names:
    """Generated DOT node names, stable within one drawing."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.inodes: dict[str, str] = {}

    def file(self, file_id: str) -> str:
        return self.files.setdefault(file_id, f"f{len(self.files)}")

    def inode(self, inode_id: str) -> str:
        return self.inodes.setdefault(inode_id, f"i{len(self.inodes)}")


def build_dot(snap: Snapshot, tgids: Sequence[int], marks: Marks | None = None) -> str:
    """DOT source (ASCII) for the processes ``tgids`` of ``snap``."""
    marks = marks or Marks()
    wanted = set(tgids)
    processes = sorted((t for t in snap.processes() if t.tgid in wanted), key=lambda t: t.pid)
    shown = {t.tgid for t in processes}
    blocking = blocking_write_ends(snap, shown)
    blocking_fds = {(b.fd.tgid, b.fd.fd): b for b in blocking}
    names = _Names()

    # Open files and inodes in order of their first holder: keeps arrows short.
    file_order: list[str] = []
    holders: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for t in processes:
        for d in snap.fds_of(t.tgid):
            if d.open_file not in snap.open_files:
                continue
            if d.open_file not in holders:
                file_order.append(d.open_file)
            holders[d.open_file].append((t.tgid, d.fd))
    inode_order: list[str] = []
    inode_path: dict[str, str] = {}
    for fid in file_order:
        f = snap.open_files[fid]
        if f.inode not in inode_path:
            inode_order.append(f.inode)
            inode_path[f.inode] = f.path

    lines = [
        "digraph files {",
        f'  graph [rankdir=LR, newrank=true, nodesep=0.12, ranksep=1.1, fontname="{_FONT}",'
        ' fontsize=11, labeljust=l, tooltip="kpeek files"];',
        f'  node [shape=plain, fontname="{_FONT}", fontsize=10];',
        f'  edge [arrowsize=0.6, color="#4a5a70", fontname="{_FONT}"];',
    ]
    if marks.caption:
        lines.append(f"  label=<{dot.label_text(marks.caption, 160)}>; labelloc=t;")
    if sum(len(v) for v in holders.values()) > LARGE_AFTER:
        # Whole-system drawings: bound crossing reduction and the x-coordinate
        # network simplex, which otherwise take minutes (1,000 processes and
        # 18,000 fds: 9 s instead of over 60 s).
        lines.append("  graph [mclimit=0.1, nslimit=0.01];")

    lines.append(
        '  subgraph cluster_fdtables { label=<<B>file descriptor tables</B>>; style="rounded";'
        ' color="#9aa7b8"; class="column fdtables";'
    )
    host = host_pidns(snap)
    by_ns: dict[int, list[Task]] = defaultdict(list)
    for t in processes:
        by_ns[t.pidns].append(t)
    ns_sorted = sorted(by_ns.items(), key=lambda kv: (kv[0] != host, min(t.pid for t in kv[1])))
    for n, (ns, members) in enumerate(ns_sorted):
        if ns == host:
            label = f"host (PID namespace {ns})"
        else:
            label = f"container: PID namespace {ns or '?'}"
        plural = "es" if len(members) != 1 else ""
        lines.append(
            f"    subgraph cluster_ns{n} {{ label=<{dot.escape(label)}"
            f'<BR/><FONT POINT-SIZE="9">{len(members)} process{plural}</FONT>>;'
            f' style="rounded,filled"; fillcolor="{_NS_FILL}"; color="#7f8fa6";'
            f' class="pidns"; id="pidns-{ns}";'
        )
        for t in members:
            lines.append(f"      {_process_node(snap, t, ns != host, marks, blocking_fds)}")
        lines.append("    }")
    lines.append("  }")

    lines.append(
        '  subgraph cluster_openfiles { label=<<B>open file table</B>>; style="rounded";'
        ' color="#9aa7b8"; class="column openfiles";'
    )
    by_file_blocking: dict[str, list[BlockingEnd]] = defaultdict(list)
    for b in blocking:
        by_file_blocking[b.fd.open_file].append(b)
    comm = {t.tgid: t.comm for t in processes}
    compact = len(file_order) > COMPACT_AFTER
    for fid in file_order:
        f = snap.open_files[fid]
        node = _file_node(
            names.file(fid), snap, f, holders[fid], comm, marks, by_file_blocking.get(fid, []),
            compact,
        )
        lines.append("    " + node)
    lines.append("  }")

    lines.append(
        '  subgraph cluster_inodes { label=<<B>inode table</B>>; style="rounded";'
        ' color="#9aa7b8"; class="column inodes";'
    )
    for iid in inode_order:
        lines.append(
            "    " + _inode_node(names.inode(iid), snap, iid, inode_path[iid], compact)
        )
    lines.append("  }")

    for t in processes:
        for d in snap.fds_of(t.tgid):
            if d.open_file not in snap.open_files:
                continue
            attrs = [f'id="e-fd-{t.tgid}-{d.fd}"']
            if (t.tgid, d.fd) in blocking_fds:
                attrs += [f'color="{_RED}"', "penwidth=2.2", 'class="blocking"']
            elif (t.tgid, d.fd) in marks.changed_fds:
                attrs += ['color="#b8860b"', "penwidth=2", 'class="changed"']
            lines.append(
                f"  p{t.tgid}:fd{d.fd}:e -> {names.file(d.open_file)}:w [{', '.join(attrs)}];"
            )
    for fid in file_order:
        f = snap.open_files[fid]
        lines.append(f'  {names.file(fid)}:e -> {names.inode(f.inode)}:w [color="#8795a8"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _cell(text: str, *, port: str | None = None, bg: str | None = None, align: str = "LEFT",
          title: str | None = None, colspan: int = 1) -> str:
    attrs = [f'ALIGN="{align}"']
    if port:
        attrs.append(f'PORT="{port}"')
    if bg:
        attrs.append(f'BGCOLOR="{bg}"')
    if title:
        attrs.append(f'TITLE="{title}"')
    if colspan > 1:
        attrs.append(f'COLSPAN="{colspan}"')
    return f"<TD {' '.join(attrs)}>{text}</TD>"


def _table(rows: list[str], border_colour: str = "#5b6b82") -> str:
    return (
        f'<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" COLOR="{border_colour}">'
        + "".join(f"<TR>{r}</TR>" for r in rows)
        + "</TABLE>"
    )


def _process_node(snap: Snapshot, t: Task, in_container: bool, marks: Marks,
                  blocking_fds: Mapping[tuple[int, int], BlockingEnd]) -> str:
    head = f"<B>PID {t.pid}</B> {dot.label_text(t.comm, _COMM_LIMIT)}"
    if in_container:
        head += f'<BR/><FONT POINT-SIZE="8">pid {t.ns_pid} in container</FONT>'
    bg = _CHANGED if t.tgid in marks.changed_processes else _HEADER
    rows = [_cell(head, bg=bg, align="CENTER", title=dot.label_text(t.comm))]
    fds = snap.fds_of(t.tgid)
    for d in fds:
        text = f"fd {d.fd}"
        if d.cloexec:
            text += ' <FONT POINT-SIZE="8" COLOR="#6b5a00">close-on-exec</FONT>'
        cell_bg = None
        if (t.tgid, d.fd) in blocking_fds:
            text += f' <FONT POINT-SIZE="8" COLOR="{_RED}"><B>blocks EOF</B></FONT>'
            cell_bg = _BLOCKING
        elif (t.tgid, d.fd) in marks.changed_fds:
            cell_bg = _CHANGED
        rows.append(_cell(text, port=f"fd{d.fd}", bg=cell_bg))
    if not fds:
        rows.append(_cell('<I><FONT COLOR="#777777">no descriptors</FONT></I>'))
    return f'p{t.tgid} [id="proc-{t.tgid}", class="process", label=<{_table(rows)}>];'


def _pipe_end(f: OpenFile) -> str:
    mode = access_mode(f.flags)
    return {"O_RDONLY": "read end", "O_WRONLY": "write end"}.get(mode, "both ends")


def _file_node(name: str, snap: Snapshot, f: OpenFile, holders: list[tuple[int, int]],
               comm: Mapping[int, str], marks: Marks, blocking: list[BlockingEnd],
               compact: bool = False) -> str:
    inode = snap.inodes.get(f.inode)
    kind = inode.type if inode else "?"
    label = marks.file_labels.get(f.id)
    head = dot.label_text(f.path, _PATH_LIMIT)
    if kind in PIPE_TYPES:
        head = f"<B>{_pipe_end(f)}</B> of {head}"
    if label:
        head = f'<FONT COLOR="#555555">{dot.escape(label)}</FONT> {head}'
    bg = _CHANGED if f.id in marks.changed_files else _TYPE_COLOURS.get(kind, "#ffffff")
    offset = f"offset {f.pos} &#183; {access_mode(f.flags).removeprefix('O_')}"
    # O_LARGEFILE is set on every file a 64-bit process opens: noise here.
    flags = [n.removeprefix("O_") for n in flag_names(f.flags) if n != "O_LARGEFILE"]
    flag_text = '<FONT POINT-SIZE="8">' + dot.escape(" ".join(flags)) + "</FONT>"
    refs = f"refcount {f.refcount}" if f.refcount is not None else None
    shown = f"{len(holders)} fd{'s' if len(holders) != 1 else ''} here"
    count = f"{refs} &#183; {shown}" if refs else shown
    facts = _file_facts(snap, f, holders)
    fact_text = '<FONT POINT-SIZE="8">' + dot.label_text(facts, _FACTS_LIMIT) + "</FONT>"
    if compact:
        line = f"{head} &#183; {offset}" + (f" {flag_text}" if flags else "") + f" &#183; {count}"
        if facts:
            line += f" &#183; {fact_text}"
        rows = [_cell(line, bg=bg, title=dot.label_text(f.path))]
    else:
        rows = [_cell(head, bg=bg, title=dot.label_text(f.path)), _cell(offset)]
        if flags:
            rows.append(_cell(flag_text))
        if facts:
            rows.append(_cell(fact_text))
        rows.append(_cell(count))
    if kind in PIPE_TYPES:
        who: dict[int, list[int]] = defaultdict(list)
        for tgid, fd in holders:
            who[tgid].append(fd)
        shown_holders = sorted(who.items())
        held = ", ".join(
            f"{tgid} {dot.label_text(comm.get(tgid, '?'), 12)} (fd {','.join(map(str, fds))})"
            for tgid, fds in shown_holders[:_HOLDERS_SHOWN]
        )
        if len(shown_holders) > _HOLDERS_SHOWN:
            held += f" and {len(shown_holders) - _HOLDERS_SHOWN} more processes"
        rows.append(_cell(f'<FONT POINT-SIZE="8">held by {held}</FONT>'))
    if blocking:
        readers = sorted({r for b in blocking for r in b.readers})
        stray = sorted({b.fd.tgid for b in blocking})
        text = (
            f"keeps reader {', '.join(map(str, readers))} from end-of-file"
            f"<BR/>(held by {', '.join(map(str, stray))})"
        )
        rows.append(_cell(f'<FONT COLOR="{_RED}"><B>{text}</B></FONT>', bg=_BLOCKING))
    colour = _RED if blocking else "#5b6b82"
    cls = "openfile blocking" if blocking else "openfile"
    return f'{name} [id="file-{name}", class="{cls}", label=<{_table(rows, colour)}>];'


def _file_facts(snap: Snapshot, f: OpenFile, holders: list[tuple[int, int]]) -> str:
    """What lsof would add for this open file: anon inode details, its locks."""
    parts = []
    details = snap.details.get(f.id)
    if details and (text := summary(dict(details))):
        parts.append(text)
    held = set(holders)
    for lock in snap.locks:
        if held.intersection(lock.owners):
            parts.append(f"lock {lock_text(lock)}")
    return " ".join(parts)


def _inode_node(name: str, snap: Snapshot, inode_id: str, path: str,
                compact: bool = False) -> str:
    inode = snap.inodes.get(inode_id)
    kind = inode.type if inode else "?"
    colour = _TYPE_COLOURS.get(kind, "#ffffff")
    sock = snap.sockets.get(inode.ino) if inode is not None and kind == "socket" else None
    sock_text = dot.label_text(socket_name(sock), _FACTS_LIMIT) if sock else ""
    if compact:
        line = (f"<B>{dot.escape(kind)}</B> {dot.label_text(path, _PATH_LIMIT)}"
                f' <FONT POINT-SIZE="8">inode {dot.escape(inode_id)}'
                + (f" &#183; {sock_text}" if sock_text else "") + "</FONT>")
        rows = [_cell(line, bg=colour, title=dot.label_text(path))]
        return f'{name} [id="inode-{name}", class="inode", label=<{_table(rows)}>];'
    rows = [
        _cell(f"<B>{dot.escape(kind)}</B>", bg=colour),
        _cell(dot.label_text(path, _PATH_LIMIT), title=dot.label_text(path)),
    ]
    facts = [f"inode {dot.escape(inode_id)}"]
    if inode is not None and inode.size is not None and kind in ("regular", "memfd"):
        facts.append(f"size {inode.size}")
    if inode is not None and inode.nlink is not None and kind in ("regular", "memfd", "dir"):
        facts.append(f"links {inode.nlink}")
    if sock_text:
        facts.append(sock_text)
    rows.append(_cell('<FONT POINT-SIZE="8">' + " &#183; ".join(facts) + "</FONT>"))
    return f'{name} [id="inode-{name}", class="inode", label=<{_table(rows)}>];'
