"""Find every report in a kernel log and describe it.

The walk: find the next line holding a report start marker (see
:data:`kpeek.reports.table.REPORT_KINDS`), collect the lines that belong to
it (same console context, unreliable frames aside, up to the start of the
next report), describe them with the table, then continue from the next
report's start. Every loop is bounded (lines per report, reports per log,
characters per line), so any input finishes in time linear in its size.
"""

from __future__ import annotations

from dataclasses import field

from kpeek.lazyre import lazy
from kpeek.records import record
from kpeek.reports.console import CONSOLE_CONTEXT, MAX_LINE, ConsoleLine, split_line
from kpeek.reports.describe import corruption, describe, normalize_title
from kpeek.reports.details import Details, extract_details
from kpeek.reports.kinds import classify
from kpeek.reports.patterns import ReportKind
from kpeek.reports.scan import MarkerScanner
from kpeek.reports.symbolized import is_inline_frame, unsymbolized
from kpeek.reports.table import CONTINUATION_MARKERS, INFO_WITH_STACK, REPORT_KINDS

MAX_REPORTS = 1000  # per log
MAX_SCAN_LINES = 3000  # raw lines looked at after a report's first line
MAX_REPORT_LINES = 1500  # lines kept in one report
# Lines examined in one log (report lines plus candidate start lines): a
# log dense with start markers stops here instead of taking minutes.
WORK_BUDGET = 400_000
# Lines from before the start that are kept with a report (more when the
# log has caller ids, which tell us reliably which lines are ours).
_PREFIX_LINES = 5
_PREFIX_LINES_CALLER = 10

# With caller ids, how far past the start of another task's report we still
# collect our own lines (reports of several CPUs interleave, but not forever).
_INTERLEAVE_BYTES = 32 << 10

# A GCE serial console drops the connection right after a panic; what we
# have of the report is then likely cut short.
_CONSOLE_HANGUP = "serialport: VM disconnected."
_GUILTY_FRAME = lazy(r".* in ((?:<[a-zA-Z0-9_: ]+>)?[a-zA-Z0-9_:]+)")


@record
class Report:
    """One kernel report found in a log.

    ``title`` groups identical crashes (syzbot's conventions), ``kind`` is a
    word from :data:`kpeek.reports.kinds.KINDS`, ``guilty_frame`` the
    function to blame (None when it could not be found: then the title says
    ``corrupted``), ``corrupted`` is True when the report is cut off or
    mixed with other output (``corrupted_reason`` says how).
    ``start_line``/``end_line`` are 0-based line numbers in the input;
    ``lines`` are the report's message lines as used for the analysis.
    """

    title: str
    kind: str
    guilty_frame: str | None
    corrupted: bool
    corrupted_reason: str
    start_line: int
    end_line: int
    context: str
    alt_titles: list[str] = field(default_factory=list)
    detector: str | None = None
    access: str | None = None
    lines: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    details: Details = field(default_factory=Details)
    # Offset in the parsed text where the search for the next report resumed.
    resume_offset: int = field(default=0, repr=False, compare=False)


@record
class ParseResult:
    """Reports of a log, and whether parsing stopped early (``truncated``)."""

    reports: list[Report]
    truncated: bool = False


class _Log:
    """Line access into a big text without splitting all of it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._counted_to = 0
        self._line_no = 0
        self.budget = WORK_BUDGET
        self._parsed: dict[int, ConsoleLine] = {}

    def line(self, start: int, end: int) -> str:
        """The line text, cut at MAX_LINE so a 100 MB line is not copied."""
        return self.text[start:min(end, start + MAX_LINE)]

    def console_line(self, start: int, end: int, number: int) -> ConsoleLine:
        """The parsed line at ``start``; reports with caller ids scan past the
        next report's start, so the lines ahead are kept for it."""
        cache = self._parsed
        line = cache.get(start)
        if line is None:
            line = cache[start] = split_line(self.line(start, end), number)
        return line

    def forget_before(self, offset: int) -> None:
        """Drop parsed lines before ``offset``: no later report looks at them."""
        cache = self._parsed
        while cache:
            first = next(iter(cache))
            if first >= offset:
                break
            del cache[first]

    def line_start(self, offset: int) -> int:
        return self.text.rfind("\n", 0, offset) + 1

    def line_end(self, start: int) -> int:
        end = self.text.find("\n", start)
        return len(self.text) if end < 0 else end

    def line_number(self, offset: int) -> int:
        # Queries come in increasing order most of the time; count incrementally.
        if offset < self._counted_to:
            self._counted_to, self._line_no = 0, 0
        self._line_no += self.text.count("\n", self._counted_to, offset)
        self._counted_to = offset
        return self._line_no


_HEADERS = tuple((k.header, k) for k in REPORT_KINDS)


def _kind_of(line: str) -> ReportKind | None:
    """The kind of report ``line`` starts, or None."""
    for header, kind in _HEADERS:
        if header in line and kind.starts(line):
            return kind
    return None


_MARKERS = tuple(dict.fromkeys((*(k.header for k in REPORT_KINDS), *INFO_WITH_STACK)))


def parse_reports(text: str, *, max_reports: int = MAX_REPORTS) -> list[Report]:
    """All kernel reports in ``text`` (a console log, dmesg or journal output).

    Returns them in log order; an empty list when the log holds none. Never
    raises on bad input: binary junk is just lines without reports.
    """
    return parse_log(text, max_reports=max_reports).reports


def parse_log(text: str, *, max_reports: int = MAX_REPORTS, start: int = 0,
              whole: bool = True) -> ParseResult:
    """Like :func:`parse_reports`, also saying whether the work bounds cut parsing short.

    ``start`` is the offset to look for reports from (the text before it can
    still give a report its prefix lines); ``whole`` is False for one window
    of a longer log (see :mod:`kpeek.reports.stream`), where what follows is
    unknown, so a last report is not compared with the earlier ones.
    """
    log = _Log(text)
    scanner = MarkerScanner(text, _MARKERS)
    reports: list[Report] = []
    pos = start
    truncated = False
    while True:
        found = _next_start(log, scanner, pos)
        if found is None:
            truncated = log.budget <= 0
            break
        if len(reports) >= max_reports:
            truncated = True
            break
        at, kind = found
        report, next_pos = _collect(log, scanner, at, kind)
        report.resume_offset = next_pos
        if _is_go_crash(report):  # not ours; what its lines held may still be
            next_pos = log.line_end(at) + 1
            report.resume_offset = next_pos
        else:
            reports.append(report)
        if next_pos <= at or next_pos > len(text):
            break
        pos = next_pos
    if reports and _CONSOLE_HANGUP in text:
        last = reports[-1]
        if not last.corrupted:
            last.corrupted, last.corrupted_reason = True, "the console disconnected"
    if whole:
        drop_truncated_repeat(reports)
    return ParseResult(reports, truncated)


# A Go program's crash ("panic: runtime error: ..." then "goroutine 1 [running]:")
# shares the "panic:" marker with kernel panics but is no kernel report.
_GOROUTINE = lazy(r"^goroutine [0-9]+ \[|^\[signal SIG[A-Z]+: ")


def _is_go_crash(report: Report) -> bool:
    return report.title.startswith("panic:") and any(
        _GOROUTINE.match(line) for line in report.lines[:64])


def drop_truncated_repeat(reports: list[Report]) -> None:
    """Drop a last report that repeats an earlier one cut short (a console that
    printed the report again, or a log saved twice, ends mid-report): the same
    kind, its lines a prefix of the earlier report's."""
    if len(reports) < 2:
        return
    last = reports[-1]
    n = len(last.lines)
    if not n:
        return
    for earlier in reports[:-1]:
        if earlier.kind != last.kind or n > len(earlier.lines):
            continue
        head = earlier.lines[:n]
        if head[:-1] != last.lines[:-1] or not head[-1].startswith(last.lines[-1]):
            continue
        # Cut short: inside its last line, or flagged corrupted (an equal
        # report printed twice in full stays two reports).
        if head[-1] != last.lines[-1] or (last.corrupted and not earlier.corrupted):
            reports.pop()
            return


def _next_start(log: _Log, scanner: MarkerScanner, pos: int) -> tuple[int, ReportKind] | None:
    """Offset of the next line (at or after ``pos``) that starts a report, and its kind."""
    text = log.text
    while log.budget > 0:
        log.budget -= 1
        hit = scanner.next_at(pos)
        if hit < 0:
            return None
        start = log.line_start(hit)
        if start < pos:
            start = pos
        end = log.line_end(start)
        log.budget -= (end - start) // MAX_LINE
        kind = _kind_of(log.line(start, end))
        if kind is not None:
            return start, kind
        pos = end + 1
        if pos > len(text):
            return None
    return None


@record
class _Scan:
    """The lines that belong to one report, as found by :func:`_scan`."""

    lines: list[ConsoleLine]  # our context, unreliable frames left out
    with_unreliable: list[ConsoleLine]  # the same with '?' frames, for the shown trace
    report_end: int  # lines[:report_end] are the report proper
    next_report: int | None  # offset of the next report's start line
    stop: int  # offset where the scan stopped


def _scan(log: _Log, scanner: MarkerScanner, first: ConsoleLine, pos: int) -> _Scan:
    """Collect the lines after ``first`` (which ends just before ``pos``) that are its report's.

    Lines of other contexts are left out; without caller ids the report
    ends where the next one starts, with them it goes on (other tasks'
    reports interleave) until the line bounds.
    """
    text = log.text
    context = first.context
    has_caller = context not in ("", CONSOLE_CONTEXT)
    scan = _Scan([first], [first], 1, None, pos)
    min_lines = 16 if "BUG: KMSAN:" in first.text else 22
    text_lines = 1
    skip_rest = cpu_traceback = False
    # A symbolized header starts with the functions inlined at the fault, each
    # a copy of the header line ("BUG: KASAN: ... in f file:line [inline]"):
    # the header line proper after them goes on the same report.
    inline_head = is_inline_frame(first.text)
    number = first.number + 1
    next_hit = scanner.next_at(pos) if pos <= len(text) else -1
    for _ in range(MAX_SCAN_LINES):
        if pos > len(text) or len(scan.lines) >= MAX_REPORT_LINES or log.budget <= 0:
            break
        end = log.line_end(pos)
        log.budget -= 1 + (end - pos) // MAX_LINE  # long lines cost what finding their end costs
        line = log.console_line(pos, end, number)
        raw = log.line(pos, end)
        if inline_head and line.context == context:
            inline_head = _kind_of(raw) is not None
            if inline_head:
                # A header line (inline, or the one they belong to): ours, not
                # another report's start.
                inline_head = is_inline_frame(line.text)
                pos, number = end + 1, number + 1
                scan.stop = pos
                text_lines += 1
                scan.lines.append(line)
                scan.with_unreliable.append(line)
                scan.report_end = len(scan.lines)
                next_hit = scanner.next_at(pos) if pos <= len(text) else -1
                continue
        if 0 <= next_hit < end:
            if scan.next_report is None and _starts_another(raw, line, context, has_caller):
                scan.next_report = pos
                if not has_caller:
                    break  # without caller ids nothing after here is reliably ours
            next_hit = scanner.next_at(end + 1) if end + 1 <= len(text) else -1
        if scan.next_report is not None and pos - scan.next_report > _INTERLEAVE_BYTES:
            break  # well past the next report: what is left of ours is not coming
        pos, number = end + 1, number + 1
        scan.stop = pos
        if line.context != context and not (cpu_traceback and line.context.startswith("[C")):
            continue
        ours = scan.next_report is None or has_caller
        if line.questionable:
            if ours and len(scan.with_unreliable) < MAX_REPORT_LINES:
                scan.with_unreliable.append(line)
            continue
        text_lines += 1
        if "Disabling lock debugging due to kernel taint" in raw or skip_rest:
            continue
        if "Sending NMI from CPU" in raw:
            cpu_traceback = True  # the other CPUs' backtraces belong to this report
        elif text_lines > min_lines and (
                "Kernel panic - not syncing" in raw
                or "WARNING: possible circular locking dependency detected" in raw):
            # The panic_on_warn panic (or a lockdep report the oops itself
            # provoked) repeats what we already have: drop the rest.
            skip_rest = True
            continue
        scan.lines.append(line)
        if ours:
            scan.with_unreliable.append(line)
            scan.report_end = len(scan.lines)
    return scan


def _starts_another(raw: str, line: ConsoleLine, context: str, has_caller: bool) -> bool:
    """Whether ``raw`` (inside a report of ``context``) starts the next report."""
    if _kind_of(raw) is None:
        # Informational messages with their own stack trace end a report too.
        return any(s in raw for s in INFO_WITH_STACK)
    # A panic or trap line continues our report, unless another task printed it.
    continues = any(c.search(raw) for c in CONTINUATION_MARKERS)
    return not continues or (has_caller and line.context != context)


def _collect(log: _Log, scanner: MarkerScanner, start: int,
             kind: ReportKind) -> tuple[Report, int]:
    """The report starting at offset ``start``, and the offset to look for the next one."""
    log.forget_before(start)
    first_no = log.line_number(start)
    end = log.line_end(start)
    first = split_line(log.line(start, end), first_no)
    context = first.context
    prefix = _prefix_lines(log, start, first_no, context,
                           _PREFIX_LINES_CALLER if context.startswith("[T") else _PREFIX_LINES)
    scan = _scan(log, scanner, first, end + 1)
    lines = scan.lines
    texts = [ln.text for ln in lines[:scan.report_end]]
    # A symbolized log is titled as its raw log was (syzbot's titles).
    raw_texts = unsymbolized(texts)
    desc = describe(raw_texts, kind)
    if not desc.title:
        # Nothing matched the cleaned lines: fall back to the raw first line.
        desc = describe(unsymbolized([log.line(start, end)]), kind)
    title = normalize_title(desc.title)
    reason = desc.corrupted_reason or corruption(
        title, unsymbolized([ln.text for ln in lines]), desc.format)
    m = _GUILTY_FRAME.match(title)
    guilty = m.group(1) if m and m.group(1) != "corrupted" else None
    cls = classify(title, kind.header)
    report = Report(
        title=title,
        kind=cls.kind,
        guilty_frame=guilty,
        corrupted=bool(reason),
        corrupted_reason=reason,
        start_line=first_no,
        end_line=lines[scan.report_end - 1].number,
        context=context,
        alt_titles=[normalize_title(a) for a in desc.alt_titles],
        detector=cls.detector,
        access=cls.access,
        lines=texts,
        prefix=prefix,
        details=extract_details(scan.with_unreliable, prefix[-3:]),
    )
    return report, (scan.next_report if scan.next_report is not None else scan.stop)


def _prefix_lines(log: _Log, start: int, first_no: int, context: str, limit: int) -> list[str]:
    """Up to ``limit`` lines of the same context just before the report."""
    text = log.text
    out: list[str] = []
    end = start - 1
    number = first_no - 1
    for _ in range(limit * 4):
        if end < 0 or len(out) >= limit:
            break
        low = max(0, end - 64 * MAX_LINE)
        newline = text.rfind("\n", low, end)
        begin = newline + 1 if newline >= 0 else low
        line = split_line(log.line(begin, end), number)
        if line.context == context and line.text and not line.questionable:
            out.append(line.text)
        end, number = begin - 1, number - 1
    out.reverse()
    return out
