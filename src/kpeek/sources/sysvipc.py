"""SysV IPC objects as the kernel reports them: message queues from
/proc/sysvipc/msg, and single semaphores through semctl(2) (GETVAL, GETPID:
/proc/sysvipc/sem has no per-semaphore fields). Both answer for the IPC
namespace of the calling thread, and give pids in kpeek's own pid namespace.
"""

from __future__ import annotations

import ctypes

from kpeek.records import record

GETPID, GETVAL = 11, 12


@record(frozen=True, slots=True)
class MessageQueue:
    """One queue's row of /proc/sysvipc/msg."""

    msqid: int
    key: int
    messages: int
    bytes: int
    last_sender: int  # pid, 0 when nothing was ever sent
    last_receiver: int


@record(frozen=True, slots=True)
class Semaphore:
    value: int
    last_pid: int  # the process that changed it last (semop, SETVAL, an undo at exit)


def message_queues() -> dict[int, MessageQueue]:
    """msqid -> its queue, read by column name (the header line names them)."""
    try:
        with open("/proc/sysvipc/msg", "rb") as f:
            lines = f.read().decode().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    if not lines:
        return {}
    names = lines[0].split()
    found = {}
    for line in lines[1:]:
        row = dict(zip(names, line.split(), strict=False))
        try:
            q = MessageQueue(int(row["msqid"]), int(row["key"]), int(row["qnum"]),
                             int(row["cbytes"]), int(row["lspid"]), int(row["lrpid"]))
        except (KeyError, ValueError):
            continue
        found[q.msqid] = q
    return found


def semaphores(semid: int, nums: list[int]) -> dict[int, Semaphore]:
    """Semaphore number -> its value and last changer, for those of set
    ``semid`` that semctl answers (none when the set is gone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    found = {}
    for num in nums:
        value = libc.semctl(semid, num, GETVAL)
        pid = libc.semctl(semid, num, GETPID)
        if value >= 0 and pid >= 0:
            found[num] = Semaphore(value, pid)
    return found
