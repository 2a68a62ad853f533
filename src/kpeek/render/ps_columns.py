"""ps's columns: each a header, a text value and a sort key, from the model.

Names follow ps -o where ps has one (pid, ppid, user, %cpu, %mem, rss, vsz,
start, time, args/cmd/command, comm, stat, wchan, addr); kpeek's own: tgid,
pgid, sid, nspid, pidns.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable
from functools import cache

from kpeek.ids import show_pointer
from kpeek.model import Task
from kpeek.records import record

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


@record(frozen=True)
class Clock:
    """What the time columns need: now, boot time, total memory."""

    now: float
    boot: float  # seconds since the epoch at boot
    mem_total: int  # bytes
    btime: float = 0.0  # /proc/stat's boot time in whole seconds, as ps's START uses

    @classmethod
    def read(cls) -> Clock:
        now = time.time()
        boot = now
        mem = 0
        btime = 0.0
        try:
            # /proc/uptime, not btime: btime is whole seconds, and ps's %CPU of a
            # young process would be off by tens of percent.
            with open("/proc/uptime", "rb") as f:
                boot = now - float(f.read().split()[0])
            with open("/proc/meminfo", "rb") as f:
                for line in f:
                    if line.startswith(b"MemTotal:"):
                        mem = int(line.split()[1]) * 1024
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        btime = float(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return cls(now, boot, mem, btime or boot)


@cache
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def cpu_seconds(t: Task) -> float | None:
    return None if t.usage is None else (t.usage.utime + t.usage.stime) / CLK_TCK


def cpu_percent(t: Task, clock: Clock) -> float | None:
    """As ps computes it: CPU time over the task's whole life."""
    used = cpu_seconds(t)
    if used is None:
        return None
    alive = clock.now - (clock.boot + t.start_time / CLK_TCK)
    return 100.0 * used / alive if alive > 0 else 0.0


def mem_percent(t: Task, clock: Clock) -> float | None:
    if t.usage is None or not clock.mem_total:
        return None
    return 100.0 * t.usage.rss / clock.mem_total


def start_text(t: Task, clock: Clock) -> str:
    """ps's START: HH:MM within a day, else Mon DD, else the year."""
    # ps adds the start ticks to btime (whole seconds): near a minute's edge
    # the precise boot time would print the next minute
    started = (clock.btime or clock.boot) + t.start_time / CLK_TCK
    age = clock.now - started
    local = time.localtime(started)
    if age < 24 * 3600:
        return time.strftime("%H:%M", local)
    if local.tm_year == time.localtime(clock.now).tm_year:
        return time.strftime("%b%d", local)
    return str(local.tm_year)


def time_text(seconds: float | None) -> str:
    """ps's TIME: [DD-]HH:MM:SS of CPU time."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}-{text}" if days else text


def command_line(t: Task) -> str:
    """The full command line; ``[comm]`` when there is none (kernel threads), as ps."""
    if t.usage is not None and t.usage.cmdline:
        return " ".join(t.usage.cmdline)
    return f"[{t.comm}]"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


@record(frozen=True)
class Column:
    """One ps column: its header, its text for a task, its sort key, its JSON name."""

    header: str
    text: Callable[[Task, Clock, bool], str]
    key: Callable[[Task, Clock], Any]
    json_key: str


def _kib(n: int | None) -> str:
    return "-" if n is None else str(n // 1024)


COLUMNS: dict[str, Column] = {
    "pid": Column("PID", lambda t, c, r: str(t.pid), lambda t, c: t.pid, "pid"),
    "tgid": Column("TGID", lambda t, c, r: str(t.tgid), lambda t, c: t.tgid, "tgid"),
    "ppid": Column("PPID", lambda t, c, r: str(t.ppid), lambda t, c: t.ppid, "ppid"),
    "pgid": Column("PGID", lambda t, c, r: str(t.pgid), lambda t, c: t.pgid, "pgid"),
    "sid": Column("SID", lambda t, c, r: str(t.sid), lambda t, c: t.sid, "sid"),
    "nspid": Column("NSPID", lambda t, c, r: str(t.ns_pid), lambda t, c: t.ns_pid, "ns_pid"),
    "pidns": Column("PIDNS", lambda t, c, r: str(t.pidns or "?"), lambda t, c: t.pidns, "pidns"),
    "user": Column("USER", lambda t, c, r: user_name(t.uid), lambda t, c: user_name(t.uid), "user"),
    "uid": Column("UID", lambda t, c, r: str(t.uid), lambda t, c: t.uid, "uid"),
    "stat": Column("ST", lambda t, c, r: t.state, lambda t, c: t.state, "state"),
    "%cpu": Column(
        "%CPU",
        lambda t, c, r: _num(cpu_percent(t, c)),
        lambda t, c: cpu_percent(t, c) or 0.0,
        "cpu_percent",
    ),
    "%mem": Column(
        "%MEM",
        lambda t, c, r: _num(mem_percent(t, c)),
        lambda t, c: mem_percent(t, c) or 0.0,
        "mem_percent",
    ),
    "vsz": Column(
        "VSZ",
        lambda t, c, r: _kib(t.usage.vsz if t.usage else None),
        lambda t, c: t.usage.vsz if t.usage else 0,
        "vsz_kib",
    ),
    "rss": Column(
        "RSS",
        lambda t, c, r: _kib(t.usage.rss if t.usage else None),
        lambda t, c: t.usage.rss if t.usage else 0,
        "rss_kib",
    ),
    "start": Column("START", lambda t, c, r: start_text(t, c), lambda t, c: t.start_time, "start"),
    "time": Column(
        "TIME",
        lambda t, c, r: time_text(cpu_seconds(t)),
        lambda t, c: cpu_seconds(t) or 0.0,
        "cpu_time_s",
    ),
    "wchan": Column("WCHAN", lambda t, c, r: t.wchan or "-", lambda t, c: t.wchan or "", "wchan"),
    "addr": Column(
        "ADDR",
        lambda t, c, r: show_pointer(t.address, r) or "-",
        lambda t, c: t.address or 0,
        "address",
    ),
    "comm": Column("COMM", lambda t, c, r: t.comm, lambda t, c: t.comm, "comm"),
    "args": Column(
        "COMMAND", lambda t, c, r: command_line(t), lambda t, c: command_line(t), "cmdline"
    ),
}
ALIASES = {
    "command": "args",
    "cmd": "args",
    "state": "stat",
    "s": "stat",
    "pcpu": "%cpu",
    "pmem": "%mem",
    "lwp": "pid",
    "tid": "pid",
    "spid": "pid",
    "stime": "start",
    "start_time": "start",
    "cputime": "time",
    "ucomm": "comm",
    "fname": "comm",
    "task": "addr",
    "ns": "pidns",
}
DEFAULT = (
    "user", "pid", "tgid", "ppid", "pgid", "sid", "nspid", "pidns", "stat",
    "%cpu", "%mem", "vsz", "rss", "start", "time", "wchan", "comm", "args",
)  # fmt: skip


def resolve(name: str) -> str | None:
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in COLUMNS else None


def usage_dict(t: Task, clock: Clock) -> dict[str, Any]:
    """The ps-only facts for JSON; empty when the source did not read them."""
    if t.usage is None:
        return {}
    return {
        "user": user_name(t.uid),
        "cpu_percent": round(cpu_percent(t, clock) or 0.0, 2),
        "mem_percent": round(mem_percent(t, clock) or 0.0, 2),
        "vsz_kib": t.usage.vsz // 1024,
        "rss_kib": t.usage.rss // 1024,
        "start": clock.boot + t.start_time / CLK_TCK,
        "cpu_time_s": cpu_seconds(t),
        "cmdline": list(t.usage.cmdline),
    }
