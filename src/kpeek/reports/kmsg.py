"""The live kernel log, read from /dev/kmsg without blocking.

Each read(2) of /dev/kmsg returns one record, ``pri,seq,usec,flags[,caller=T1];text``
followed by optional `` KEY=value`` lines. We open it non-blocking and read
until EAGAIN (the end of what the kernel has), so this never waits for new
messages. Records are turned back into the familiar console form
``[   12.345678][   T1] text`` that :func:`kpeek.reports.parse_reports` reads.
"""

from __future__ import annotations

import errno
import os

from kpeek.errors import NotPermitted, NotSupported

KMSG_PATH = "/dev/kmsg"
_MAX_RECORDS = 200_000  # the ring buffer holds far fewer; a bound all the same
_RECORD_SIZE = 8192  # larger than the kernel's per-record limit (1024 + dict)


def kmsg_record_to_line(record: bytes) -> str | None:
    """One /dev/kmsg record as a console line, or None when it is malformed."""
    head, sep, body = record.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    if len(fields) < 4:
        return None
    try:
        usec = int(fields[2])
    except ValueError:
        return None
    caller = ""
    for extra in fields[4:]:
        if extra.startswith(b"caller="):
            caller = extra[len(b"caller="):].decode("ascii", "replace")
    text = body.split(b"\n", 1)[0].decode("utf-8", "replace")
    stamp = f"[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}]"
    if caller:
        stamp += f"[{caller:>6}]"
    return f"{stamp} {text}"


def read_kmsg(path: str = KMSG_PATH) -> str:
    """The kernel log as console text, oldest record first.

    Raises NotPermitted when the kernel refuses (kernel.dmesg_restrict=1
    needs root or CAP_SYSLOG) and NotSupported when there is no /dev/kmsg.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError as e:
        raise NotPermitted(
            f"cannot read {path}: {e.strerror}; run as root or with CAP_SYSLOG"
            " (kernel.dmesg_restrict is set), or pass a saved log: kpeek oops FILE") from None
    except FileNotFoundError:
        raise NotSupported(f"{path} does not exist; pass a saved log: kpeek oops FILE") from None
    lines: list[str] = []
    try:
        for _ in range(_MAX_RECORDS):
            try:
                record = os.read(fd, _RECORD_SIZE)
            except BlockingIOError:
                break  # EAGAIN: we have everything the kernel has now
            except OSError as e:
                if e.errno == errno.EPIPE:
                    continue  # records were overwritten while we read; go on
                if e.errno == errno.EINVAL:
                    continue  # a record larger than our buffer; skip it
                raise
            if not record:
                break
            line = kmsg_record_to_line(record)
            if line is not None:
                lines.append(line)
    finally:
        os.close(fd)
    return "\n".join(lines) + ("\n" if lines else "")
