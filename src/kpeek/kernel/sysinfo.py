"""What kernel this is and the state it was in, read from its memory.

Release, version and host name from ``init_uts_ns``; the time since boot
from the runqueue clocks (``rq->clock``, the sched clock that also stamps the
log); CPUs from ``nr_cpu_ids`` and ``__cpu_online_mask``; taint from
``tainted_mask``; a panic from ``panic_cpu`` and the log's "Kernel panic"
line. All of these are data symbols: kallsyms must have them (KALLSYMS_ALL).
"""

from __future__ import annotations

import re
import struct
from dataclasses import field

from kpeek.errors import NotSupported
from kpeek.kernel.logrecord import LogRecord
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.modules import taint_letters
from kpeek.kernel.program import Kernel
from kpeek.kernel.sched import RunqueueClock
from kpeek.records import record

# panic()'s own line; its closing "---[ end Kernel panic - ... ]---" is not at a line start
PANIC_LINE = re.compile(r"^Kernel panic - not syncing: (.*)$", re.M)


@record
class SysInfo:
    release: str
    version: str
    machine: str
    nodename: str
    build_id: str | None
    uptime: float | None  # seconds since boot when the dump was taken (or now, live)
    cpus_possible: int
    cpus_online: int
    taint: int
    panic_cpu: int | None  # the CPU that panicked, None when none did
    panic_message: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def taint_flags(self) -> str:
        return taint_letters(self.taint)


def _u(kernel: Kernel, name: str, size: int, signed: bool = False) -> int | None:
    address = kernel.symbol_address(name)
    if address is None:
        return None
    return int.from_bytes(kernel.memory.read(address, size), "little", signed=signed)


def _utsname(kernel: Kernel) -> dict[str, str]:
    address = kernel.symbol_address("init_uts_ns")
    if address is None:
        raise NotSupported(
            f"{kernel.origin}: the data symbol init_uts_ns is not among the kernel's symbols "
            "(kallsyms without data symbols, as /proc/kallsyms on a kernel without "
            "CONFIG_KALLSYMS_ALL): use uname and /proc on a live system")
    name = kernel.object("struct uts_namespace", address).member("name")
    return {f: name.member(f).value() for f in ("release", "version", "machine", "nodename")}


def _online(kernel: Kernel, possible: int) -> int:
    address = kernel.symbol_address("__cpu_online_mask")
    if address is None:
        return possible
    words = (possible + 63) // 64
    bits = struct.unpack(f"<{words}Q", kernel.memory.read(address, 8 * words))
    return sum(bin(w).count("1") for w in bits)


def _uptime(kernel: Kernel) -> float | None:
    clock = RunqueueClock(kernel)
    return clock.latest_ns / 1e9 if clock.usable else None


def sys_info(kernel: Kernel, log: list[LogRecord] | None = None,
             build_id: str | None = None) -> SysInfo:
    """The kernel's identity and state. ``log`` (read_log's records) gives the
    panic message; ``build_id`` comes from where the target keeps it."""
    uts = _utsname(kernel)
    notes = []
    possible = _u(kernel, "nr_cpu_ids", 4) or 1
    try:
        uptime = _uptime(kernel)
    except MemoryReadError as e:
        uptime = None
        notes.append(f"uptime unknown: {e}")
    panic_cpu = _u(kernel, "panic_cpu", 4, signed=True)
    message = None
    for entry in reversed(log or []):
        found = PANIC_LINE.search(entry.text)
        if found:
            message = found[1].strip()
            break
    return SysInfo(
        release=uts["release"], version=uts["version"], machine=uts["machine"],
        nodename=uts["nodename"], build_id=build_id, uptime=uptime,
        cpus_possible=possible, cpus_online=_online(kernel, possible),
        taint=_u(kernel, "tainted_mask", 8) or 0,
        panic_cpu=panic_cpu if panic_cpu is not None and panic_cpu >= 0 else None,
        panic_message=message if panic_cpu is not None and panic_cpu >= 0 else None,
        notes=notes,
    )


def _cpu_count(path: str) -> int:
    """The number of CPUs in a /sys cpu list ("0-3,5")."""
    with open(path) as f:
        text = f.read().strip()
    count = 0
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def live_sys_info(build_id: str | None) -> SysInfo:
    """The running kernel's identity and state from uname(2), /proc and /sys:
    the live kernel whose data symbols kallsyms does not list. A kernel that
    runs has not panicked."""
    import os

    uts = os.uname()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    with open("/proc/sys/kernel/tainted") as f:
        taint = int(f.read())
    cpus = "/sys/devices/system/cpu"
    return SysInfo(
        release=uts.release, version=uts.version, machine=uts.machine, nodename=uts.nodename,
        build_id=build_id, uptime=uptime, cpus_possible=_cpu_count(f"{cpus}/possible"),
        cpus_online=_cpu_count(f"{cpus}/online"), taint=taint, panic_cpu=None,
        panic_message=None,
        notes=["read from uname(2), /proc and /sys (the kernel's data symbols are not listed "
               "in kallsyms here)"])
