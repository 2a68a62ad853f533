"""The live kernel's log through /dev/kmsg, the kernel's own reader of the
printk ring buffer: what ``kpeek log`` reads when the buffer cannot be read
from memory (kallsyms without data symbols has no ``prb``).

Each read(2) returns one record: ``PRI,SEQ,USEC,FLAGS[,caller=T123];TEXT``
then ``KEY=value`` lines (SUBSYSTEM, DEVICE) indented by a space. The text
escapes newlines and unprintable bytes as ``\\xNN``; they are undone here so
that records compare with those read from memory.
"""

from __future__ import annotations

import errno
import os
import re

from kpeek.errors import NotPermitted, NotSupported
from kpeek.kernel.logrecord import LogRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kpeek.kernel.program import Kernel

KMSG = "/dev/kmsg"
_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


_MAX_RECORDS = 200_000  # the ring buffer holds far fewer; a bound all the same
_RECORD_SIZE = 8192  # larger than the kernel's per-record limit (1024 + dict)


def read_kmsg(path: str = KMSG, hint: str = "") -> list[LogRecord]:
    """Every record /dev/kmsg holds now, oldest first: read without blocking
    until EAGAIN, so this never waits for new messages. NotPermitted when the
    kernel refuses (kernel.dmesg_restrict=1 needs root or CAP_SYSLOG),
    NotSupported without /dev/kmsg; ``hint`` ends either message."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError as e:
        raise NotPermitted(f"cannot read {path}: {e.strerror}; run as root or with CAP_SYSLOG"
                           f" (kernel.dmesg_restrict is set){hint}") from None
    except OSError as e:
        raise NotSupported(f"cannot read {path}: {e.strerror}{hint}") from None
    records = []
    try:
        for _ in range(_MAX_RECORDS):
            try:
                raw = os.read(fd, _RECORD_SIZE)
            except BlockingIOError:
                break  # EAGAIN: everything the kernel has now
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.EINVAL):
                    continue  # overwritten while we read, or larger than our buffer
                raise NotSupported(f"cannot read {path}: {e.strerror}{hint}") from None
            if not raw:
                break
            record = parse_record(raw)
            if record is not None:
                records.append(record)
    finally:
        os.close(fd)
    return records


def parse_record(raw: bytes) -> LogRecord | None:
    head, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    try:
        pri, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None
    caller = None
    for f in fields[4:]:
        if f.startswith(b"caller="):
            who = f[7:]
            number = int(who[1:]) if who[1:].isdigit() else 0
            caller = number | 0x80000000 if who.startswith(b"C") else number
    text, *props = rest.rstrip(b"\n").split(b"\n")
    keys = dict(p[1:].split(b"=", 1) for p in props if p.startswith(b" ") and b"=" in p)
    return LogRecord(seq=seq, ts_nsec=usec * 1000, level=pri & 7, facility=pri >> 3,
                     caller_id=caller, text=_unescape(text),
                     subsystem=_unescape(keys.get(b"SUBSYSTEM", b"")),
                     device=_unescape(keys.get(b"DEVICE", b"")))


def _unescape(raw: bytes) -> str:
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw).decode("utf-8", "replace")


def kernel_log(kernel: Kernel) -> tuple[list[LogRecord], str | None]:
    """The log from the kernel's memory; for the live kernel whose buffer is
    not readable there, /dev/kmsg's records with a note saying why."""
    from kpeek.kernel.printk import read_log

    try:
        return read_log(kernel), None
    except NotSupported as e:
        if not kernel.live:
            raise
        return read_kmsg(), f"read from /dev/kmsg, not from memory: {e}"
