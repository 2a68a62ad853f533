"""Console lines: strip timestamps, caller ids and log-system prefixes.

A kernel log reaches us as a serial console capture (``[  12.345678] msg``,
maybe with ``[T123]``/``[C1]`` caller ids from CONFIG_PRINTK_CALLER), as
``dmesg`` output (also ``dmesg -T`` with wall-clock stamps), as a journal
export (``Nov 23 16:00:00 host kernel: msg``) or as raw /dev/kmsg records.
Each line is reduced to its message text plus a *context*: the caller id
when there is one, ``"console"`` for a kernel timestamp without caller id,
``""`` for a line without any kernel prefix (user-space noise on a serial
console, or a log without timestamps at all). A report keeps to the context
of its first line, which is how interleaved output is separated.
"""

from __future__ import annotations

import re

from kpeek.lazyre import lazy
from kpeek.records import record
from kpeek.reports.symbolized import undecoded

# Longer lines are cut: nothing in a report needs more, and it bounds the
# work every pattern does on hostile input.
MAX_LINE = 2048

CONSOLE_CONTEXT = "console"

_KERNEL_PREFIX = lazy(
    r"^(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:.{0,200}? login: )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? "
)
# The same without the "login: " prompt, for the lines (nearly all) that have
# none: the lazy ".{0,200}? login: " costs every other line a 200-char scan.
_KERNEL_PREFIX_NO_LOGIN = lazy(
    r"^(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? "
)
# "dmesg -T": [Mon Nov 23 16:00:00 2026] msg
_WALLCLOCK_PREFIX = lazy(
    r"^(?:<[0-9]+>)?\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 0-9]\d "
    r"\d\d:\d\d:\d\d \d{4}\] "
)
# syslog/journal: "Nov 23 16:00:00 host kernel: msg" or ISO "2026-11-23T16:00:00+0000 host kernel: "
_SYSLOG_PREFIX = lazy(
    r"^(?:[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d(?:\.\d{1,9})?"
    r"|\d{4}-\d\d-\d\dT[0-9:.,+\-]{8,32}) [^ ]{1,64} kernel: "
)
# "dmesg -x": "kern  :warn  : [  1.0] msg"
_FACILITY_PREFIX = lazy(r"^[a-z]{3,8} *:[a-z]{3,7} *: ")
# "journalctl -o short-monotonic": "[  123.456789] host kernel: msg"
_HOST_KERNEL = lazy(r"^[^ ]{1,64} kernel: ")
# An unreliable stack frame: "[<ffff...>] ? func+0x1/0x2" or " ? func+0x1/0x2".
_QUESTIONABLE = lazy(r"(\[<[0-9a-f]+>\])? \? ")


# Not frozen: a frozen dataclass's __init__ costs 2.5x, once per log line.
@record(slots=True, unsafe_hash=True)
class ConsoleLine:
    """One log line reduced to its message.

    ``text`` has the prefixes removed (and, for an unreliable ``?`` frame,
    the ``?`` marker too), ``context`` says whose output it is (see the
    module docstring), ``questionable`` marks unreliable stack frames,
    ``number`` is the 0-based line number in the input.
    """

    number: int
    text: str
    context: str
    questionable: bool


def split_line(raw: str, number: int) -> ConsoleLine:
    """Parse one raw log line (without its newline)."""
    if len(raw) > MAX_LINE:
        raw = raw[:MAX_LINE]
    if raw.endswith("\r"):
        raw = raw[:-1]
    if raw[:1] not in ("[", "<", "*"):
        # Rarer formats first strip their own prefix (dmesg -x, syslog).
        m = _FACILITY_PREFIX.match(raw)
        if m:
            raw = raw[m.end():]
        m = _SYSLOG_PREFIX.match(raw)
        if m:
            raw = raw[m.end():]
            if not _kernel_prefix(raw):
                return _with_context(raw, CONSOLE_CONTEXT, number)
    m = _kernel_prefix(raw)
    if m:
        caller = m.group(1)
        context = CONSOLE_CONTEXT if caller is None else caller.replace(" ", "")
        # The message starts after the first "] " (the timestamp or caller id).
        text = raw[raw.index("] ") + 2:]
        if " kernel: " in text[:80]:
            host = _HOST_KERNEL.match(text)
            if host:
                text = text[host.end():]
        return _with_context(text, context, number)
    m = _WALLCLOCK_PREFIX.match(raw)
    if m:
        return _with_context(raw[m.end():], CONSOLE_CONTEXT, number)
    return ConsoleLine(number, undecoded(raw), "", False)


def _kernel_prefix(raw: str) -> re.Match[str] | None:
    if "login: " in raw:
        return _KERNEL_PREFIX.match(raw)
    return _KERNEL_PREFIX_NO_LOGIN.match(raw)


def _with_context(text: str, context: str, number: int) -> ConsoleLine:
    text = undecoded(text)
    if "?" in text and "<EOI>" not in text and _QUESTIONABLE.search(text):
        pos = text.find(" ? ")
        return ConsoleLine(number, text[pos + 2:], context, True)
    if text.endswith(" (unreliable)"):  # powerpc marks unreliable frames this way
        return ConsoleLine(number, text[:-13], context, True)
    if text.endswith((" unreliable ", " unreliable")) and "/0x" in text:
        # the same after decode_stacktrace.sh, which strips the parentheses
        return ConsoleLine(number, text.rstrip()[:-11], context, True)
    return ConsoleLine(number, text, context, False)
