"""Run a little work inside another process's namespace, from a thread.

setns(2) of a network or IPC namespace changes only the calling thread, so
a short-lived thread joins the namespace, does the work and ends; the rest
of kpeek never leaves its own namespaces. (os.setns is Python 3.12+.)
"""

from __future__ import annotations

import ctypes
import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
_NAMES = {CLONE_NEWIPC: "ipc", CLONE_NEWNET: "net"}


def same_namespace(pid: int, kind: int) -> bool:
    """Whether ``pid`` is in this process's namespace of ``kind``."""
    name = _NAMES[kind]
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino == os.stat(f"/proc/self/ns/{name}").st_ino


def run_in_namespace(pid: int, kind: int, work: Callable[[], T]) -> T:
    """``work()`` run in ``pid``'s namespace of ``kind`` (CLONE_NEWNET or
    CLONE_NEWIPC); OSError when it cannot be joined, and whatever ``work``
    raises."""
    ns = os.open(f"/proc/{pid}/ns/{_NAMES[kind]}", os.O_RDONLY | os.O_CLOEXEC)
    done: list[T] = []
    failed: list[BaseException] = []

    def join_and_work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(ns, kind) != 0:
            err = ctypes.get_errno()
            failed.append(OSError(err, f"setns into pid {pid}'s {_NAMES[kind]} namespace: "
                                       f"{os.strerror(err)}"))
            return
        try:
            done.append(work())
        except BaseException as e:  # handed to the caller's thread
            failed.append(e)

    try:
        worker = threading.Thread(target=join_and_work, name=f"kpeek-{_NAMES[kind]}ns",
                                  daemon=True)
        worker.start()
        worker.join()
    finally:
        os.close(ns)
    if failed:
        raise failed[0]
    if not done:
        raise OSError(f"nothing done in pid {pid}'s {_NAMES[kind]} namespace")
    return done[0]
