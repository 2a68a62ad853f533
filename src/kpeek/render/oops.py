"""Kernel reports as text and as JSON documents: the views of ``kpeek oops``.

The text layout is the one rich drew (a summary table, a two-column facts
grid, the call trace, the disassembled Code: bytes), written as plain lines:
rich cost 3 s of a 4 s run over 700 reports. Lines are never folded, cells
are padded but no line keeps trailing blanks, and styles (bold, dim,
colours) are ANSI codes only where stdout is a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kpeek.render.plain import cell_width
from kpeek.reports.kinds import KINDS
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up

if TYPE_CHECKING:  # capstone loads only for a report with Code: bytes
    from typing import Any, TextIO

    from kpeek.kernel.disasm import Listing
    from kpeek.reports import Report
    from kpeek.reports.details import Details

DEFAULT_FRAMES = 40
# Piped output: rich's width for a console that is not a terminal (the rule's length).
PIPE_WIDTH = 240

_SGR = {"bold": "1", "dim": "2", "red": "31", "yellow": "33", "cyan": "36"}


class Lines:
    """Output lines with optional styles, written in one go at the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.lines: list[str] = []

    def style(self, text: str, style: str) -> str:
        """``text`` in ``style`` ("bold red", "dim" ...) on a terminal, as it is elsewhere."""
        if not self.tty or not style or not text:
            return text
        codes = ";".join(_SGR[word] for word in style.split())
        return f"\x1b[{codes}m{text}\x1b[0m"

    def add(self, text: str = "", style: str = "") -> None:
        self.lines.append(self.style(text, style))

    def rule(self) -> None:
        if not self.tty:
            width = PIPE_WIDTH
        else:  # shutil (and its bz2, lzma) only for a terminal
            import shutil

            width = shutil.get_terminal_size().columns
        self.lines.append("─" * width)

    def table(self, columns: Sequence[str] | None, rows: Iterable[Sequence[str]],
              title: str | None = None) -> None:
        """Columns two spaces apart, each padded to its widest cell; ``columns`` None
        for a table without a header line. Cells must already be escaped."""
        body = [list(row) for row in rows]
        head = [list(columns)] if columns is not None else []
        widths = [max(map(cell_width, cells)) for cells in zip(*head, *body, strict=True)]
        if title is not None:
            self.add(title)
        for i, row in enumerate(head + body):
            line = "  ".join(c + " " * (w - cell_width(c))
                             for c, w in zip(row, widths, strict=True)).rstrip()
            self.add(line, "bold" if head and i == 0 else "")

    def flush(self) -> None:
        if self.lines:
            self.out.write("\n".join(self.lines) + "\n")
        self.lines = []


def pointer(addr: int | None, d: Details, show_raw: bool) -> str | None:
    """A fault address as shown: raw when allowed or harmless, else a keyed hash."""
    if addr is None:
        return None
    # NULL-page, poison, non-canonical and user addresses reveal no kernel layout.
    harmless = addr < 0x10000 or any(
        k in note for note in d.address_notes
        for k in ("POISON", "poison", "non-canonical", "user-space", "0xdead"))
    if show_raw or harmless:
        return f"0x{addr:016x}"
    from kpeek.ids import show_pointer  # hashing loads only for live-kernel pointers

    return show_pointer(addr)


def summary(out: Lines, reports: Sequence[tuple[int, Report]], total: int, source: str) -> None:
    """The table of reports: number, first line, kind, title, corrupted."""
    out.table(("#", "line", "kind", "title", "corrupted"),
              ((str(n), str(r.start_line + 1), r.kind, for_terminal(r.title),
                "yes" if r.corrupted else "") for n, r in reports),
              title=for_terminal(f"{total} reports in {source}"))


def report(out: Lines, r: Report, number: int, show_raw: bool, full: bool) -> None:
    """The detailed text view of one report."""
    d = r.details
    out.add(out.style(f"[{number}] ", "bold") + out.style(for_terminal(r.title), "bold red"))
    facts: list[tuple[str, str, str]] = []  # (label, value, style)

    def fact(label: str, value: str, style: str = "") -> None:
        facts.append((label, value, style))

    kind = r.kind + (f": {KINDS[r.kind]}" if r.kind in KINDS else "")
    extra = ", ".join(x for x in (r.detector, r.access) if x)
    fact("kind", kind + (f" [{extra}]" if extra else ""))
    fact("guilty frame", r.guilty_frame
         or ("not found (report corrupted)" if r.corrupted else "none in the title"))
    fact("log lines", f"{r.start_line + 1}-{r.end_line + 1}"
         + ("" if r.context in ("", "console") else f" (caller {r.context})"))
    if r.corrupted:
        fact("corrupted", f"yes: {r.corrupted_reason}", "yellow")
    for message in d.messages:
        fact("message", for_terminal(message))
    if d.pid is not None:
        where = f" on CPU {d.cpu}" if d.cpu is not None else ""
        fact("task", for_terminal(f"{d.comm} (pid {d.pid}){where}"))
    if d.blocked_seconds is not None:
        fact("blocked", f"for more than {d.blocked_seconds} s (in state D)")
    if d.kernel_release:
        fact("kernel", for_terminal(d.kernel_release))
    if d.tainted is not None:
        if d.taint_flags:
            fact("tainted", "; ".join(f"{c}: {m}" for c, m in d.taint_flags))
        else:
            fact("tainted", "no" if not d.tainted else "yes (G: only GPL modules)")
    if d.ip:
        fact("faulting ip", for_terminal(d.ip if not d.user_mode else f"{d.ip} (user space)"))
    shown = pointer(d.fault_address, d, show_raw)
    if shown:
        fact("address", shown)
        for note in d.address_notes:
            fact("", f"-> {note}", "cyan")
    for note in d.register_notes:
        fact("register", note, "cyan")
    width = max(cell_width(label) for label, _, _ in facts)
    for label, value, style in facts:
        out.add((label.ljust(width) + "  " + out.style(value, style)).rstrip())
    _trace(out, r, full)
    _code(out, d)
    if full:
        out.add("report lines:", "bold")
        for line in r.lines:
            out.add(for_terminal("  " + line).rstrip())


def _trace(out: Lines, r: Report, full: bool) -> None:
    trace = r.details.call_trace
    if not trace:
        return
    out.add(out.style("call trace", "bold") + out.style(
        "  ('?' = unreliable: a stale return address found on the stack)", "dim"))
    section = None
    shown = trace if full else trace[:DEFAULT_FRAMES]
    for f in shown:
        if f.section != section:
            section = f.section
            out.add(f" {section}:", "bold dim")
        if f.inline:  # as the symbolizer wrote it: no offset of its own
            name = f"{f.function} {f.source} [inline]"
        else:
            name = f"{f.function}+{f.offset:#x}/{f.size:#x}"
            if f.module:
                name += f" [{f.module}]"
            if f.source:
                name += f" {f.source}"
        name = for_terminal(name)
        if not f.reliable:
            out.add(out.style("   ? ", "dim") + out.style(name, "dim"))
        else:
            guilty = (r.guilty_frame is not None
                      and f.function.split(".")[0].endswith(r.guilty_frame))
            out.add("     " + out.style(name, "bold" if guilty else ""))
    if len(trace) > len(shown):
        out.add(f"   ... {len(trace) - len(shown)} more frames (--full shows all)", "dim")


def code_listing(d: Details) -> Listing | None:
    """The Code: bytes disassembled around the faulting instruction, if possible."""
    if d.code is None:
        return None
    from kpeek.kernel.disasm import disassemble_around

    # With the faulting ip as func+off/size, place the bytes inside the
    # function so branch targets within it can be named.
    base, symbolize = 0, None
    func, off, size = _ip_parts(d)
    if func is not None and off >= d.code.fault_offset:
        base = off - d.code.fault_offset

        def symbolize(addr: int) -> str | None:
            return f"{func}+{addr:#x}" if 0 <= addr < size else None
    try:
        return disassemble_around(d.code.data, d.code.fault_offset, d.code.arch,
                                  address=base, symbolize=symbolize)
    except ValueError:
        return None


def _ip_parts(d: Details) -> tuple[str | None, int, int]:
    """(function, offset, size) of the faulting ip ``func+0xoff/0xsize``."""
    if not d.ip or "+0x" not in d.ip:
        return None, 0, 0
    func, _, rest = d.ip.partition("+")
    off, _, size = rest.partition("/")
    try:
        return func, int(off, 16), int(size, 16) if size else 0
    except ValueError:
        return None, 0, 0


def _location(d: Details, rel: int) -> str:
    """An instruction's place: ``func+0xoff`` when the faulting ip is known, else ``+0xrel``."""
    func, off, _ = _ip_parts(d)
    if func is None:
        return f"{rel:+#x}"
    off += rel
    return f"{func}{'+' if off >= 0 else '-'}{abs(off):#x}"


def _code(out: Lines, d: Details) -> None:
    listing = code_listing(d)
    if listing is None or d.code is None:
        return
    base = listing.instructions[listing.fault_index].address
    out.add(out.style("code", "bold") + out.style(
        f"  (Code: bytes decoded, {d.code.arch}; '<--' marks the faulting instruction)", "dim"))
    insns = listing.instructions
    # Bytes that do not decode at the very end are an instruction the dump cut off.
    keep = len(insns)
    while keep > listing.fault_index + 1 and not insns[keep - 1].valid:
        keep -= 1
    cut = sum(ins.size for ins in insns[keep:])
    insns = insns[:keep]
    width = max(len(_location(d, ins.address - base)) for ins in insns)
    for i, ins in enumerate(insns):
        rel = ins.address - base
        mark = i == listing.fault_index
        target = f"  <{ins.symbol}>" if ins.symbol else ""
        line = f"   {_location(d, rel):>{width}}  {ins.raw.hex(' '):<24} {ins.text}{target}"
        out.add(for_terminal(line + ("   <-- fault" if mark else "")).rstrip(),
                "bold red" if mark else ("dim" if not ins.valid else ""))
    if cut:
        out.add(f"   ({cut} more byte(s): an instruction cut off by the dump)", "dim")


def report_json(r: Report, number: int, show_raw: bool) -> dict[str, Any]:
    """The JSON form of one report."""
    d = r.details
    listing = code_listing(d)
    code = None
    if d.code is not None:
        fault_address = (listing.instructions[listing.fault_index].address
                         if listing is not None else 0)
        code = {
            "arch": d.code.arch,
            "bytes": d.code.data.hex(),
            "fault_offset": d.code.fault_offset,
            "instructions": [] if listing is None else [
                {"offset": ins.address - fault_address,
                 "location": _location(d, ins.address - fault_address),
                 "target": ins.symbol,
                 "bytes": ins.raw.hex(),
                 "text": ins.text, "valid": ins.valid, "fault": i == listing.fault_index}
                for i, ins in enumerate(listing.instructions)
            ],
        }
    return {
        "number": number,
        "title": r.title,
        "alt_titles": r.alt_titles,
        "kind": r.kind,
        "detector": r.detector,
        "access": r.access,
        "guilty_frame": r.guilty_frame,
        "corrupted": r.corrupted,
        "corrupted_reason": r.corrupted_reason or None,
        "first_line": r.start_line + 1,
        "last_line": r.end_line + 1,
        "context": r.context or None,
        "task": None if d.pid is None else {"pid": d.pid, "comm": d.comm, "cpu": d.cpu,
                                            "blocked_seconds": d.blocked_seconds},
        "kernel_release": d.kernel_release,
        "tainted": d.tainted,
        "taint_flags": [{"flag": c, "meaning": m} for c, m in d.taint_flags],
        "ip": d.ip,
        "user_mode": d.user_mode,
        "fault_address": pointer(d.fault_address, d, show_raw),
        "address_notes": d.address_notes,
        "register_notes": d.register_notes,
        "messages": d.messages,
        "call_trace": [
            {"function": f.function, "offset": None if f.inline else f.offset,
             "size": None if f.inline else f.size, "module": f.module,
             "reliable": f.reliable, "section": f.section, "source": f.source,
             "inline": f.inline}
            for f in d.call_trace
        ],
        "code": code,
    }
