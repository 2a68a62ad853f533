"""The peak memory of a command, as the command itself used it.

ru_maxrss of a child (wait4, RUSAGE_CHILDREN) is no measure here: it keeps
the peak from before exec, when the forked child still counted the parent's
pages (a pytest process of 1.5 GB made `kpeek oops -` look like 1.5 GB).
VmHWM in /proc/PID/status starts afresh with the new program at exec."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def wait_with_peak(proc: subprocess.Popen, every: float = 0.05) -> int:
    """Wait for ``proc``, sampling its VmHWM (which only grows) until it exits:
    the peak resident memory of its program in KB."""
    peak = 0
    while proc.poll() is None:
        seen = vm_hwm_kb(proc.pid)
        if seen is not None:
            peak = max(peak, seen)
        time.sleep(every)
    return peak
