"""The live kernel log, read from /dev/kmsg without blocking.

Each read(2) of /dev/kmsg returns one record, ``pri,seq,usec,flags[,caller=T1];text``
followed by optional `` KEY=value`` lines. We open it non-blocking and read
until EAGAIN (the end of what the kernel has), so this never waits for new
messages. Records are turned back into the familiar console form
``[   12.345678][   T1] text`` that :func:`kpeek.reports.parse_reports` reads;
the records come from :mod:`kpeek.kernel.kmsg`, which ``kpeek log`` reads too.
"""

from __future__ import annotations

from kpeek.kernel.kmsg import KMSG, parse_record
from kpeek.kernel.kmsg import read_kmsg as read_records
from kpeek.kernel.logrecord import LogRecord

KMSG_PATH = KMSG


def kmsg_record_to_line(record: bytes) -> str | None:
    """One /dev/kmsg record as console text, or None when it is malformed."""
    parsed = parse_record(record)
    return None if parsed is None else console_lines(parsed)


def console_lines(record: LogRecord) -> str:
    """``[   12.345678][   T1] text``, the stamp on each line of the record."""
    usec = record.ts_nsec // 1000
    stamp = f"[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}]"
    if record.caller:
        stamp += f"[{record.caller:>6}]"
    return "\n".join(f"{stamp} {line}" for line in record.text.split("\n"))


def read_kmsg(path: str = KMSG_PATH) -> str:
    """The kernel log as console text, oldest record first (NotPermitted,
    NotSupported as kernel.kmsg.read_kmsg says)."""
    records = read_records(path, hint="; or pass a saved log: kpeek oops FILE")
    return "".join(console_lines(r) + "\n" for r in records)
