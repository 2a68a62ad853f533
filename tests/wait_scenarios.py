"""Ways to stop the side of a wait that would wake it, each undone on exit
even when the test fails: SIGSTOP (SIGCONT), a tracer (a helper process that
seizes and interrupts the task; killed), a frozen cgroup v2 (thawed, the
task moved out, the cgroup removed), and a frozen ext4 file system on a loop
device (thawed, unmounted, the image deleted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fuse_scenarios import state, wait_for

TRACER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
tid = int(sys.argv[1])
if libc.ptrace(PTRACE_SEIZE, tid, None, None) or libc.ptrace(PTRACE_INTERRUPT, tid, None, None):
    print("failed", ctypes.get_errno(), flush=True)
    sys.exit(1)
print("traced", flush=True)
while True:
    signal.pause()
"""


# Undoes a freeze when the test process dies without its teardown (pytest
# killed): it waits for end-of-file on a pipe only the test holds.
WATCHDOG = """
import os, subprocess, sys
fd, kind, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.read(fd, 1)
if kind == "fs":
    subprocess.run(["fsfreeze", "-u", target], capture_output=True, timeout=60)
    subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
    import shutil
    shutil.rmtree(os.path.dirname(target), ignore_errors=True)
else:
    try:
        with open(target, "w") as f:
            f.write("0")
    except OSError:
        pass
"""


@contextlib.contextmanager
def watchdog(kind: str, target: str) -> Iterator[None]:
    """While the block runs, a process that undoes ``kind`` ("fs": thaw and
    unmount the mount point; "cgroup": write 0 to this cgroup.freeze) if the
    test process dies; told to stand down (and reaped) on a normal exit."""
    r, w = os.pipe()
    guard = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(r), kind, target],
                             pass_fds=[r], start_new_session=True)
    os.close(r)
    try:
        yield
    finally:
        os.close(w)  # end-of-file: the guard undoes it now too (harmless twice)
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.wait(timeout=60)


def thread_state(tgid: int, tid: int) -> str:
    with open(f"/proc/{tgid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def cgroup2_mount() -> str | None:
    """Where cgroup v2 is mounted (with its freezer), or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                where = left.split()[4]
                if os.path.exists(os.path.join(where, "cgroup.procs")):
                    return where
    return None


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[str]:
    """``pid`` stopped by SIGSTOP; yields what doctor should say releases it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: state(pid) == "T", 10, "the stop")
        yield f"kill -CONT {pid}"
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def traced(pid: int, tid: int | None = None) -> Iterator[str]:
    """Thread ``tid`` (default: the main thread) of ``pid`` stopped by a tracer
    process; yields the tracer's pid as text."""
    tid = tid or pid
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(tid)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert tracer.stdout.readline().strip() == "traced"
        wait_for(lambda: thread_state(pid, tid) == "t", 10, "the trace stop")
        yield str(tracer.pid)
    finally:
        tracer.kill()
        tracer.wait(timeout=10)
        tracer.stdout.close()


@contextlib.contextmanager
def frozen_cgroup(pid: int) -> Iterator[str]:
    """``pid`` in a new cgroup v2 that is frozen; yields the cgroup's
    directory. On exit: thawed, ``pid`` moved back, the cgroup removed."""
    mount = cgroup2_mount()
    assert mount is not None
    path = tempfile.mkdtemp(prefix="kpeek-test-", dir=mount)
    with open(f"/proc/{pid}/cgroup") as f:
        home = next(x.split(":", 2)[2].strip() for x in f if x.startswith("0::"))
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        with watchdog("cgroup", os.path.join(path, "cgroup.freeze")):
            with open(os.path.join(path, "cgroup.freeze"), "w") as f:
                f.write("1")
            events = os.path.join(path, "cgroup.events")
            wait_for(lambda: "frozen 1" in Path(events).read_text(), 10, "the freeze")
            yield path
    finally:
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
        with contextlib.suppress(OSError), open(mount + home + "/cgroup.procs", "w") as f:
            f.write(str(pid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(path)
                break
            except OSError:  # still populated until the task moved or was reaped
                time.sleep(0.05)


@contextlib.contextmanager
def frozen_ext4() -> Iterator[tuple[str, callable]]:
    """A small ext4 image loop-mounted under /tmp; yields (mount point,
    freeze()). On exit: thawed, unmounted, the image deleted."""
    tmp = tempfile.mkdtemp(prefix="kpeek-fsfreeze-")
    image, mnt = os.path.join(tmp, "fs.img"), os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(8 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True,
                       timeout=60)
        subprocess.run(["mount", "-o", "loop", image, mnt], check=True, capture_output=True,
                       timeout=60)
        mounted = True

        def freeze() -> None:
            subprocess.run(["fsfreeze", "-f", mnt], check=True, timeout=60)

        with watchdog("fs", mnt):
            yield mnt, freeze
    finally:
        if mounted:
            subprocess.run(["fsfreeze", "-u", mnt], capture_output=True, timeout=60)
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def diagnosis_on(source: str):
    """doctor's diagnosis of a whole-system snapshot taken from ``source``
    (bpf or procfs), with stacks, as the doctor takes it; no kernel log."""
    from kpeek.diagnose.findings import diagnose
    from kpeek.sources import procfs
    from kpeek.sources.bpf import snapshot as bpf

    take = bpf.take_snapshot if source == "bpf" else procfs.take_snapshot
    return diagnose(take(None, stacks=True), kernel_log=False)
