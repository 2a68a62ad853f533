"""What fdinfo says about a file beyond pos/flags/mnt_id/ino.

Anonymous inodes explain themselves there: an epoll fd lists the fds it
watches (``tfd:``), a pidfd its pid, a signalfd its mask, a timerfd its clock
and next expiry, an inotify fd its watches, an eventfd its counter; a ptmx
names its pts (``tty-index:``); every file lists the locks it owns (``lock:``).
Each parser returns plain JSON-ready values.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

CLOCKS = {
    0: "realtime",
    1: "monotonic",
    7: "boottime",
    8: "realtime_alarm",
    9: "boottime_alarm",
}


def _fields(raw: bytes) -> dict[str, str]:
    out = {}
    for line in raw.decode("ascii", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


_TOKEN = re.compile(r"([\w-]+):\s*(\S+)")


def _tokens(line: str) -> dict[str, str]:
    """``key: value`` words of a tfd: or inotify line."""
    return dict(_TOKEN.findall(line))


def _kernel_dev(sdev: str) -> str:
    """The kernel's internal dev_t (major << 20 | minor), as "major:minor"."""
    value = int(sdev, 16)
    return f"{value >> 20}:{value & 0xFFFFF}"


def _signals(mask_hex: str) -> list[str]:
    import signal  # only for a signalfd: its enums cost 1.5 ms of every files start

    mask = int(mask_hex, 16)
    names = []
    for bit in range(mask.bit_length()):
        if mask >> bit & 1:
            try:
                names.append(signal.Signals(bit + 1).name)
            except ValueError:
                names.append(f"SIG{bit + 1}")
    return names


def _timespec(text: str) -> float:
    sec, _, nsec = text.strip("()").partition(",")
    return int(sec) + int(nsec) / 1e9


def lock_lines(raw: bytes) -> list[str]:
    """The ``lock:`` lines, each in /proc/locks' format."""
    return [
        line.partition(b":")[2].strip().decode("ascii", "replace")
        for line in raw.splitlines()
        if line.startswith(b"lock:")
    ]


def parse(path: str, raw: bytes) -> dict[str, Any] | None:
    """A dict explaining the file at ``path`` from its fdinfo ``raw``; None when
    fdinfo tells nothing beyond the common fields (or says it in a form this
    kernel's kpeek does not know)."""
    try:
        return _parse(path, raw)
    except (ValueError, KeyError, IndexError):
        return None


def _parse(path: str, raw: bytes) -> dict[str, Any] | None:
    text = raw.decode("ascii", "replace")
    if path == "anon_inode:[eventpoll]":
        watches = []
        for line in text.splitlines():
            if line.startswith("tfd:"):
                t = _tokens(line)
                watches.append(
                    {
                        "fd": int(t["tfd"]),
                        "events": f"0x{int(t['events'], 16):x}",
                        "inode": f"{_kernel_dev(t['sdev'])}:{int(t['ino'], 16)}",
                    }
                )
        return {"kind": "epoll", "watches": watches}
    if path == "anon_inode:inotify":
        watches = []
        for line in text.splitlines():
            if line.startswith("inotify "):
                t = _tokens(line)
                watches.append(
                    {
                        "wd": int(t["wd"], 16),
                        "inode": f"{_kernel_dev(t['sdev'])}:{int(t['ino'], 16)}",
                        "mask": f"0x{int(t['mask'], 16):x}",
                    }
                )
        return {"kind": "inotify", "watches": watches}
    f = _fields(raw)
    if path == "anon_inode:[eventfd]" and "eventfd-count" in f:
        out: dict[str, Any] = {"kind": "eventfd", "count": int(f["eventfd-count"], 16)}
        if "eventfd-id" in f:
            out["id"] = int(f["eventfd-id"])
        if "eventfd-semaphore" in f:
            out["semaphore"] = f["eventfd-semaphore"] == "1"
        return out
    if path == "anon_inode:[signalfd]" and "sigmask" in f:
        return {"kind": "signalfd", "signals": _signals(f["sigmask"])}
    if path == "anon_inode:[timerfd]" and "clockid" in f:
        clock = int(f["clockid"])
        return {
            "kind": "timerfd",
            "clock": CLOCKS.get(clock, str(clock)),
            "ticks": int(f.get("ticks", "0")),
            "next_expiry_s": _timespec(f.get("it_value", "(0, 0)")),
            "interval_s": _timespec(f.get("it_interval", "(0, 0)")),
        }
    if "Pid" in f and ("pidfd" in path):
        return {
            "kind": "pidfd",
            "pid": int(f["Pid"]),
            "ns_pid": int(f.get("NSpid", "0").split()[-1]),
        }
    if "tty-index" in f:
        index = int(f["tty-index"])
        return {"kind": "ptmx", "tty_index": index, "pts": f"/dev/pts/{index}"}
    return None


def read_fdinfo(tgid: int, fd: int) -> bytes | None:
    try:
        with open(f"/proc/{tgid}/fdinfo/{fd}", "rb") as f:
            return f.read()
    except OSError:
        return None
