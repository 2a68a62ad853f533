"""Real stuck states for doctor's tests, each undone on exit even on failure.

``fuse_mount(mode)`` runs tests/fuse_test_server.py on a fresh mount point;
on exit it aborts the connection (/sys/fs/fuse/connections/N/abort, which
fails every pending request and so wakes every waiter), unmounts lazily,
opens the gate, kills and reaps the server and every client it spawned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capabilities import time_scale

SERVER = Path(__file__).with_name("fuse_test_server.py")
FUSECTL = "/sys/fs/fuse/connections"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "",
             about: Sequence[subprocess.Popen] = ()) -> None:
    """Poll ``condition`` until true; AssertionError after ``timeout`` seconds,
    saying where each process of ``about`` was then (a rare failure explains itself)."""
    deadline = time.monotonic() + timeout * time_scale()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return
        time.sleep(0.02)
    where = "".join(f"\n  {describe(p)}" for p in about)
    raise AssertionError(f"timed out waiting for {what or condition}{where}")


def describe(p: subprocess.Popen) -> str:
    """A client's exit status and error, or its state, wchan and kernel stack."""
    if p.poll() is not None:
        err = p.stderr.read().decode(errors="replace")[-500:] if p.stderr else ""
        return f"pid {p.pid} exited {p.returncode}: {err.strip()}"
    try:
        with open(f"/proc/{p.pid}/stack") as f:
            stack = " < ".join(line.split()[-1] for line in f)
        return f"pid {p.pid} state {state(p.pid)} wchan {wchan(p.pid)}: {stack}"
    except OSError as e:
        return f"pid {p.pid}: {e}"


def in_fuse_write(pid: int) -> bool:
    """``pid`` waits for the server's answer to its write(2): the request that
    holds the file's i_rwsem (not the open before it, which holds none)."""
    from kpeek.diagnose.procinfo import SYSCALL_NAMES, _machine

    with open(f"/proc/{pid}/syscall") as f:
        number = f.read().split()[0]
    names = SYSCALL_NAMES.get(_machine(), {})
    return number.isdigit() and names.get(int(number)) == "write" and \
        wchan(pid).startswith("request_wait_answer")


def wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def is_mounted(mountpoint: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == mountpoint for line in f)


def ensure_fusectl() -> bool:
    """Mount fusectl (where connections are aborted) if needed; True if we did."""
    with open("/proc/self/mounts") as f:
        if " fusectl " in f.read():
            return False
    subprocess.run(["mount", "-t", "fusectl", "none", FUSECTL], check=True, timeout=10)
    return True


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the test process dies, so even a
    hard kill of pytest (no teardown) leaves no FUSE server answering and no
    client stuck: the server's death aborts its connection."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def abort_connection(connection: int | str) -> None:
    """Abort a FUSE connection: fail every pending request (the only way to
    free a client whose request the server took). fusectl may have been
    unmounted meanwhile by another test session's teardown (each unmounts
    what it mounted): then a private fusectl mount of our own does it."""
    try:
        with open(f"{FUSECTL}/{connection}/abort", "w") as f:
            f.write("1")
        return
    except OSError:
        pass
    where = tempfile.mkdtemp(prefix="kpeek-fusectl-")
    try:
        if subprocess.run(["mount", "-t", "fusectl", "none", where], capture_output=True,
                          timeout=10, check=False).returncode != 0:
            return
        try:
            with contextlib.suppress(OSError), open(f"{where}/{connection}/abort", "w") as f:
                f.write("1")
        finally:
            subprocess.run(["umount", where], capture_output=True, timeout=30, check=False)
    finally:
        os.rmdir(where)


WATCHDOG = f"""
import os, subprocess, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from fuse_scenarios import abort_connection
fd, connection, mountpoint = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.read(fd, 1)  # end-of-file: the test process closed the pipe, or died
abort_connection(connection)
subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=30, check=False)
"""


def start_watchdog(connection: int, mountpoint: str) -> tuple[subprocess.Popen, int]:
    """A process outside the test's reach that aborts the connection and
    unmounts once the test process is gone, even if it died without any
    teardown (a killed client waits for an answer uninterruptibly once the
    server took its request, so killing processes alone cannot undo a FUSE
    deadlock). Returns it and the pipe end whose closing sets it off."""
    r, w = os.pipe()
    dog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(r), str(connection), mountpoint],
                           pass_fds=[r], start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    os.close(r)
    return dog, w


PREFIX = "kpeek-fuse-"


def unmount_leftovers() -> None:
    """Lazily unmount test file systems left behind by a test process that is
    gone (the mount point's directory names its pid; another test session's
    live mounts are left alone)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            source, mountpoint = line.split()[:2]
            if source != "kpeektest" or PREFIX not in mountpoint:
                continue
            owner = mountpoint.split(PREFIX, 1)[1].split("-", 1)[0]
            if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True,
                               timeout=30, check=False)


class ByPid:
    """A process we did not start with Popen (a grandchild), for reap(): killed by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or 10)
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if state(self.pid) == "Z":
                    return  # its parent reaps it
            time.sleep(0.02)


def reap(procs: list[subprocess.Popen]) -> None:
    """Kill and wait for every process; never raises, never hangs for long."""
    for p in procs:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
        if getattr(p, "stderr", None):  # a spawned client's (describe() reads it)
            p.stderr.close()


@dataclass
class FuseMount:
    mountpoint: str
    server: subprocess.Popen
    gate: int  # write end of the pipe the server's write handler blocks on
    connection: int = 0
    clients: list[subprocess.Popen] = field(default_factory=list)

    def path(self, name: str) -> str:
        return os.path.join(self.mountpoint, name)

    def spawn(self, code: str) -> subprocess.Popen:
        """A Python client running ``code``; reaped on teardown."""
        # stderr kept for describe(): a client that died says why (a few lines at most)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self.clients.append(p)
        return p

    def abort(self) -> None:
        abort_connection(self.connection)


@contextlib.contextmanager
def fuse_mount(mode: str, single_thread: bool = False) -> Iterator[FuseMount]:
    """A mounted BlockingFS (see fuse_test_server.py) in ``mode``."""
    mounted_fusectl = ensure_fusectl()
    unmount_leftovers()
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    mountpoint = os.path.join(tmp, "mnt")
    os.mkdir(mountpoint)
    gate_r, gate_w = os.pipe()
    extra = ["single"] if single_thread else []
    server = subprocess.Popen([sys.executable, str(SERVER), mountpoint, mode, str(gate_r), *extra],
                              pass_fds=[gate_r], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    os.close(gate_r)
    m = FuseMount(mountpoint, server, gate_w)
    watchdog = None
    try:
        wait_for(lambda: is_mounted(mountpoint) or server.poll() is not None, 15, "the mount")
        assert server.poll() is None, "the FUSE test server exited"
        st = os.stat(mountpoint)
        m.connection = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
        watchdog, trigger = start_watchdog(m.connection, mountpoint)
        yield m
    finally:
        if m.connection:
            m.abort()
        if watchdog is not None:
            os.close(trigger)
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=30)
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(OSError):
            os.close(gate_w)
        reap([server, *m.clients])
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)
            os.rmdir(tmp)
        if mounted_fusectl:  # leave the machine as we found it
            subprocess.run(["umount", FUSECTL], capture_output=True, timeout=30, check=False)
