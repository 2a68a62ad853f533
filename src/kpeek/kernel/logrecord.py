"""One record of the kernel log, wherever it was read from (the ring buffer
in memory, or /dev/kmsg): a module of its own so that /dev/kmsg readers
import nothing of the memory layer."""

from __future__ import annotations

from kpeek.records import record


@record(frozen=True)
class LogRecord:
    """A record: its sequence number, time, level, facility, caller, text
    and the SUBSYSTEM/DEVICE dictionary entries /dev/kmsg gives."""

    seq: int
    ts_nsec: int
    level: int
    facility: int
    caller_id: int | None  # None where the log keeps no caller (/dev/kmsg without PRINTK_CALLER)
    text: str  # may hold several lines (a record printed with embedded newlines)
    subsystem: str = ""
    device: str = ""

    @property
    def caller(self) -> str | None:
        """``T123`` (a task) or ``C1`` (a CPU in interrupt), as printk's caller field."""
        if self.caller_id is None:
            return None
        if self.caller_id & 0x80000000:
            return f"C{self.caller_id & 0x7FFFFFFF}"
        return f"T{self.caller_id}"
