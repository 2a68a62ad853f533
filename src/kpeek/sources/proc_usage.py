"""CPU time, memory and command line of tasks, from /proc, for ps's columns.

Read for whichever source listed the tasks: /proc/PID/stat gives utime,
stime, vsize and rss; /proc/PID/cmdline the arguments (empty for kernel
threads and zombies). A task that exits meanwhile keeps ``usage`` None.
"""

from __future__ import annotations

import dataclasses
import os

from kpeek.model import Task, Usage
from kpeek.sources.proc_tasks import Vanished, parse_stat, read_bytes
from kpeek.textsafe import decode

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def usage_of(t: Task) -> Usage | None:
    base = f"/proc/{t.tgid}/task/{t.pid}"
    try:
        _, f = parse_stat(read_bytes(f"{base}/stat"))
        raw = read_bytes(f"/proc/{t.tgid}/cmdline")
    except (Vanished, OSError, ValueError):
        return None
    parts = raw.split(b"\0")
    if parts[-1] == b"":
        parts.pop()  # the usual trailing NUL; a process that rewrote its argv may lack it
    args = tuple(decode(a) for a in parts)
    return Usage(
        utime=int(f[11]),
        stime=int(f[12]),
        vsz=int(f[20]),
        rss=int(f[21]) * PAGE_SIZE,
        cmdline=args,
    )


def with_usage(tasks: list[Task]) -> list[Task]:
    return [dataclasses.replace(t, usage=usage_of(t)) for t in tasks]
