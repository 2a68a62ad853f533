"""Real process families for tests: each runs a Python script that builds a
kernel state (pipes, forks, dup2, namespaces...), prints one JSON line
describing it, then sleeps until killed.

Every family runs in its own session, so teardown kills the whole process
group (and reaps it) even when the test failed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capabilities import time_scale

# Prepended to every scenario script: report() prints the description and
# blocks; children that call report() too would garble stdout, so only the
# top process reports (children pause).
_PRELUDE = """
import json, os, signal, socket, sys, time
def report(**info):
    sys.stdout.write(json.dumps(info) + "\\n")
    sys.stdout.flush()
    while True:
        signal.pause()
def hold():
    while True:
        signal.pause()
"""


@dataclass
class Family:
    proc: subprocess.Popen
    info: dict[str, Any]
    extra: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout * time_scale())
    if not ready:
        raise TimeoutError("scenario did not report within the timeout")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"scenario exited before reporting: {err[-2000:]}")
    return line


def kill_family(proc: subprocess.Popen) -> None:
    """Kill the scenario's whole session and reap the leader."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def children_of(pid: int) -> list[int]:
    """Direct children of a process, as the kernel lists them."""
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@contextmanager
def family(script: str, *, prefix: tuple[str, ...] = (), timeout: float = 15) -> Iterator[Family]:
    """Run ``script`` (Python source using report()/hold()) and yield its Family."""
    source = _PRELUDE + textwrap.dedent(script)
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", source],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=(),
    )
    try:
        yield Family(proc, json.loads(_read_line(proc, timeout)))
    finally:
        kill_family(proc)


# The classic family: a pipe, a fork, and the child's stdout dup2'd onto the
# write end; the parent also opens one file twice and once more before fork.
PIPE_FORK_DUP2 = """
import tempfile
path = tempfile.mktemp(prefix="kpeek-shared-")
shared = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)   # opened before fork: shared offset
os.write(shared, b"hello")
r, w = os.pipe()
a = os.open(path, os.O_RDONLY)
b = os.open(path, os.O_RDONLY)                            # second open(): own offset
sync_r, sync_w = os.pipe()
child = os.fork()
if child == 0:
    os.dup2(w, 1)
    os.close(sync_r)
    os.close(sync_w)  # tells the parent the child's table is built
    hold()
os.close(sync_w)
os.read(sync_r, 1)  # EOF once the child has done its dup2
os.close(sync_r)
dup = os.dup(r)
report(parent=os.getpid(), child=child, path=path, r=r, w=w, dup=dup, shared=shared, a=a, b=b)
"""


# A parent with three sleeping children (and one extra thread), named so
# tests can find it; the children are in the parent's process group.
PARENT_OF_THREE = """
import ctypes, threading
ctypes.CDLL(None).prctl(15, b"kpeek-under-test", 0, 0, 0)
kids = []
for _ in range(3):
    kid = os.fork()
    if kid == 0:
        hold()
    kids.append(kid)
threading.Thread(target=hold, daemon=True).start()
report(parent=os.getpid(), kids=kids)
"""


# Two threads read one regular file. The first holds the file's f_pos_lock
# (a mutex) while its copy to user memory waits on a userfaultfd page no one
# serves; the second then sleeps in D on that mutex: task_struct.blocker.
# SIGKILL ends both (the uffd wait is killable, then the mutex is free).
MUTEX_WAIT = """
import ctypes, fcntl, mmap, select, struct, tempfile, threading
libc = ctypes.CDLL(None, use_errno=True)
uffd = libc.syscall(323, os.O_CLOEXEC)                       # userfaultfd(2), x86-64
assert uffd >= 0, ctypes.get_errno()
fcntl.ioctl(uffd, 0xC018AA3F, bytearray(struct.pack("QQQ", 0xAA, 0, 0)))         # UFFDIO_API
area = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
fcntl.ioctl(uffd, 0xC020AA00, bytearray(struct.pack("QQQQ", addr, 4096, 1, 0)))  # REGISTER
path = tempfile.mktemp(prefix="kpeek-mutex-")
with open(path, "wb") as f:
    f.write(b"x" * 100)
fd = os.open(path, os.O_RDONLY)
os.unlink(path)
tids = {}
# Neither thread may take a signal: one would end the holder's wait on the
# fault (the read returns short, the lock is let go) or the waiter's.
def holder():
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    tids["holder"] = threading.get_native_id()
    libc.read(fd, ctypes.c_void_p(addr), 100)
    tids["holder done"] = True
def waiter():
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    tids["waiter"] = threading.get_native_id()
    os.read(fd, 10)
    tids["waiter done"] = True
threading.Thread(target=holder, daemon=True).start()
assert select.select([uffd], [], [], 10)[0]                  # the holder's fault is pending
threading.Thread(target=waiter, daemon=True).start()
while True:
    assert "holder done" not in tids and "waiter done" not in tids, f"a read returned: {tids}"
    w = tids.get("waiter")
    try:
        if w and open(f"/proc/self/task/{w}/stat").read().rsplit(")", 1)[1].split()[0] == "D":
            break
    except FileNotFoundError:  # it has just ended: the assert above says why
        pass
    time.sleep(0.01)
report(pid=os.getpid(), fd=fd, **tids)
"""
