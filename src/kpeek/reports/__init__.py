"""Kernel log reports (oops, BUG, WARNING, KASAN, lockdep, hangs ...): find, title, explain.

``parse_reports(text)`` finds every report in a log; ``read_kmsg()`` reads
the live kernel log.
"""

from kpeek.reports.details import CodeBytes, Details, Frame
from kpeek.reports.parse import Report, parse_reports

__all__ = ["CodeBytes", "Details", "Frame", "Report", "parse_reports", "read_kmsg"]


def __getattr__(name: str) -> object:
    # The /dev/kmsg reader (and its record class) loads only for the live log:
    # kpeek oops FILE never reads it.
    if name == "read_kmsg":
        from kpeek.reports.kmsg import read_kmsg

        return read_kmsg
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
