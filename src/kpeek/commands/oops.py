"""kpeek oops [FILE|-]: read kernel crash reports (oops, BUG, WARNING, KASAN, hangs ...).

For each report in the log: a stable title (syzbot's conventions), its
kind, the guilty function, the faulting address and what it suggests,
taint flags explained, the call trace with unreliable frames marked, and
the Code: bytes disassembled around the faulting instruction. Without FILE
the live kernel log (/dev/kmsg) is read, without waiting for new messages.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rich.rule import Rule
from rich.text import Text

from kpeek import jsonout
from kpeek.commands.common import add_json, add_raw_pointers, raw_pointers_allowed
from kpeek.errors import UsageError
from kpeek.ids import show_pointer
from kpeek.kernel.disasm import Listing, disassemble_around
from kpeek.render import text as render
from kpeek.reports import Report, read_kmsg
from kpeek.reports.details import Details
from kpeek.reports.kinds import KINDS
from kpeek.reports.parse import ParseResult, parse_log
from kpeek.reports.stream import open_log, parse_stream
from kpeek.targets import core_path

_DEFAULT_FRAMES = 40


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oops", help="read kernel crash reports from a log or the live kernel",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="log file (console capture, dmesg, journal); '-' for stdin;"
                        " default: the live kernel log /dev/kmsg")
    p.add_argument("--summary", action="store_true",
                   help="only the table of reports, no details")
    p.add_argument("--report", type=int, metavar="N",
                   help="show only report N (as numbered in the summary)")
    p.add_argument("--full", action="store_true",
                   help="show every call-trace frame and the report's lines")
    add_json(p)
    add_raw_pointers(p)
    p.set_defaults(func=run)


def read_log(path: str | None) -> tuple[ParseResult, str, bool]:
    """(reports, source name, live) for a FILE argument. A file or stdin is read
    as a stream in bounded memory. Raises UsageError, NotPermitted."""
    if path is None or (path != "-" and os.path.realpath(path) == "/dev/kmsg"):
        # The live log: read what is there now, never wait for new records.
        return parse_log(_symbolize_live(read_kmsg())), "/dev/kmsg", True
    if path == "-":
        return parse_stream(sys.stdin.buffer, "stdin"), "stdin", False
    with open_log(path) as f:
        return parse_stream(f, path), path, False


def _symbolize_live(text: str) -> str:
    """Add names to bare addresses with the running kernel's kallsyms, if it is readable."""
    try:
        from kpeek.kernel.symbols import load_kallsyms
        from kpeek.reports.symbolize import symbolize_log

        syms = load_kallsyms()
    except Exception:  # no kallsyms (or not permitted): the log stays as it is
        return text
    if not len(syms):
        return text
    return symbolize_log(text, syms.symbolize)


def dump_log(core: str, args: argparse.Namespace) -> tuple[str, str, bool]:
    """The log inside the dump given with -c, as dmesg would print it, symbolized
    with the dump's own symbols."""
    from kpeek.kernel.printk import format_record
    from kpeek.kernel.printk import read_log as read_ring
    from kpeek.reports.symbolize import symbolize_log
    from kpeek.targets import open_kernel

    kernel = open_kernel(args, "kpeek oops")
    text = "\n".join(format_record(r) for r in read_ring(kernel)) + "\n"
    if kernel.symbols is not None:
        text = symbolize_log(text, kernel.symbols.symbolize)
    return text, f"the log in {core}", False


def run(args: argparse.Namespace) -> int:
    raw = raw_pointers_allowed(args)
    core = core_path(args)
    if core is not None and args.file is None:
        log, source, live = dump_log(core, args)
        parsed = parse_log(log)
    else:
        parsed, source, live = read_log(args.file)
    reports = parsed.reports
    if args.report is not None:
        if not 1 <= args.report <= len(reports):
            raise UsageError(f"--report {args.report}: the log has {len(reports)} report(s)")
        chosen = [(args.report, reports[args.report - 1])]
    else:
        chosen = list(enumerate(reports, 1))
    # A log file is the user's own data; pointers from the live kernel are secrets.
    show_raw = raw or not live
    if args.json:
        jsonout.emit("oops", {
            "source": source,
            "count": len(reports),
            "truncated": parsed.truncated,
            "reports": [report_json(r, n, show_raw) for n, r in chosen],
        })
        return 0
    out = render.console()
    if parsed.truncated:
        out.print(Text(f"note: {source} holds more than kpeek parses in one go; only the"
                       f" first {len(reports)} report(s) are shown", style="yellow"))
    if not reports:
        out.print(f"no kernel report in {source} (no oops, BUG, WARNING, KASAN, hang, "
                  "panic or lockdep report)")
        return 0
    if (len(reports) > 1 or args.summary) and args.report is None:
        out.print(render.table(
            ("#", "line", "kind", "title", "corrupted"),
            ((n, r.start_line + 1, r.kind, render.name(r.title),
              "yes" if r.corrupted else "") for n, r in chosen),
            title=f"{len(reports)} reports in {source}",
        ))
        if args.summary:
            return 0
        out.print()
    for i, (n, r) in enumerate(chosen):
        if i:
            out.print(Rule())
        print_report(out, r, n, show_raw, args.full)
    return 0


def _pointer(addr: int | None, d: Details, show_raw: bool) -> str | None:
    if addr is None:
        return None
    # NULL-page, poison, non-canonical and user addresses reveal no kernel layout.
    harmless = addr < 0x10000 or any(
        k in note for note in d.address_notes
        for k in ("POISON", "poison", "non-canonical", "user-space", "0xdead"))
    return f"0x{addr:016x}" if show_raw or harmless else show_pointer(addr)


def print_report(out, r: Report, number: int, show_raw: bool, full: bool) -> None:
    """The detailed text view of one report."""
    d = r.details
    out.print(Text(f"[{number}] ", style="bold") + Text(render.name(r.title).plain,
                                                           style="bold red"))
    facts: list[tuple[str, Text | str]] = []
    kind = r.kind + (f": {KINDS[r.kind]}" if r.kind in KINDS else "")
    extra = ", ".join(x for x in (r.detector, r.access) if x)
    facts.append(("kind", kind + (f" [{extra}]" if extra else "")))
    facts.append(("guilty frame", r.guilty_frame
                  or ("not found (report corrupted)" if r.corrupted else "none in the title")))
    facts.append(("log lines", f"{r.start_line + 1}-{r.end_line + 1}"
                  + ("" if r.context in ("", "console") else f" (caller {r.context})")))
    if r.corrupted:
        facts.append(("corrupted", Text(f"yes: {r.corrupted_reason}", style="yellow")))
    for message in d.messages:
        facts.append(("message", render.name(message)))
    if d.pid is not None:
        where = f" on CPU {d.cpu}" if d.cpu is not None else ""
        facts.append(("task", render.name(f"{d.comm} (pid {d.pid}){where}")))
    if d.blocked_seconds is not None:
        facts.append(("blocked", f"for more than {d.blocked_seconds} s (in state D)"))
    if d.kernel_release:
        facts.append(("kernel", render.name(d.kernel_release)))
    if d.tainted is not None:
        if d.taint_flags:
            facts.append(("tainted", "; ".join(f"{c}: {m}" for c, m in d.taint_flags)))
        else:
            facts.append(("tainted", "no" if not d.tainted else "yes (G: only GPL modules)"))
    if d.ip:
        facts.append(("faulting ip", render.name(d.ip) if not d.user_mode
                      else render.name(f"{d.ip} (user space)")))
    pointer = _pointer(d.fault_address, d, show_raw)
    if pointer:
        facts.append(("address", pointer))
        for note in d.address_notes:
            facts.append(("", Text(f"-> {note}", style="cyan")))
    for note in d.register_notes:
        facts.append(("register", Text(note, style="cyan")))
    grid = render.table(("", ""), facts)
    grid.show_header = False
    out.print(grid)
    _print_trace(out, r, full)
    _print_code(out, d)
    if full:
        out.print(Text("report lines:", style="bold"))
        for line in r.lines:
            out.print(render.name("  " + line))


def _print_trace(out, r: Report, full: bool) -> None:
    trace = r.details.call_trace
    if not trace:
        return
    out.print(Text("call trace", style="bold") + Text("  ('?' = unreliable: a stale return"
                                                     " address found on the stack)", style="dim"))
    section = None
    shown = trace if full else trace[:_DEFAULT_FRAMES]
    for f in shown:
        if f.section != section:
            section = f.section
            out.print(Text(f" {section}:", style="bold dim"))
        name = f"{f.function}+{f.offset:#x}/{f.size:#x}"
        if f.module:
            name += f" [{f.module}]"
        if f.source:
            name += f" {f.source}"
        guilty = r.guilty_frame is not None and f.function.split(".")[0].endswith(r.guilty_frame)
        if not f.reliable:
            out.print(Text("   ? ", style="dim") + Text(render.name(name).plain, style="dim"))
        else:
            out.print(Text("     ") + Text(render.name(name).plain,
                                           style="bold" if guilty else ""))
    if len(trace) > len(shown):
        out.print(Text(f"   ... {len(trace) - len(shown)} more frames (--full shows all)",
                       style="dim"))


def code_listing(d: Details) -> Listing | None:
    """The Code: bytes disassembled around the faulting instruction, if possible."""
    if d.code is None:
        return None
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


def _print_code(out, d: Details) -> None:
    listing = code_listing(d)
    if listing is None or d.code is None:
        return
    base = listing.instructions[listing.fault_index].address
    out.print(Text("code", style="bold") + Text(f"  (Code: bytes decoded, {d.code.arch};"
                                                " '<--' marks the faulting instruction)",
                                                style="dim"))
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
        out.print(Text(line + ("   <-- fault" if mark else ""),
                       style="bold red" if mark else ("dim" if not ins.valid else "")))
    if cut:
        out.print(Text(f"   ({cut} more byte(s): an instruction cut off by the dump)",
                       style="dim"))


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
        "fault_address": _pointer(d.fault_address, d, show_raw),
        "address_notes": d.address_notes,
        "register_notes": d.register_notes,
        "messages": d.messages,
        "call_trace": [
            {"function": f.function, "offset": f.offset, "size": f.size, "module": f.module,
             "reliable": f.reliable, "section": f.section, "source": f.source}
            for f in d.call_trace
        ],
        "code": code,
    }
