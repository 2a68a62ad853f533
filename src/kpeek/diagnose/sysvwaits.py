"""Waits on SysV IPC: semop/semtimedop on a semaphore set, msgrcv/msgsnd on
a message queue.

A SysV object has no holders the way a pipe has ends: any process allowed
to may post a semaphore or send a message. What the kernel keeps is who
last changed each semaphore (semctl GETPID) and who last sent to and
received from each queue. So the edges here are inferred (certain=False):

* semop that must take a semaphore (sem_op < 0) whose value is too low: a
  semaphore used as a lock was last changed by the process that took it, so
  the waiter waits for that process to post it. When that process has exited
  (without SEM_UNDO, or the exit would have given it back and woken the
  waiter), nobody is left to post it: a root. When the waiter itself changed
  it last (a consumer that took the last item), the poster is unknown: no edge.
* msgrcv on a queue: the last sender, if another live process; msgsnd on a
  full queue: the last receiver. An empty history means anyone: no edge.

All of it is read inside the waiter's IPC namespace.
"""

from __future__ import annotations

import os
import struct

from kpeek.diagnose.graph import Root, WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import read_user
from kpeek.model import Task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

SYSV_CALLS = {"semop", "semtimedop", "msgrcv", "msgsnd"}
IPC_NOWAIT = 0o4000
MAX_SOPS = 64
_SEMBUF = struct.Struct("=Hhh")  # struct sembuf: sem_num, sem_op, sem_flg


def sysv_edges(graph: WaitGraph, t: Task, name: str, args: list[int]) -> None:
    if name in ("semop", "semtimedop"):
        if name == "semtimedop" and args[3]:
            return  # a timeout ends it
        _semop(graph, t, args[0] & 0xFFFFFFFF, args[1], min(args[2], MAX_SOPS))
    elif name == "msgrcv" and not args[4] & IPC_NOWAIT:
        _msg(graph, t, args[0] & 0xFFFFFFFF, receive=True, mtype=args[3])
    elif name == "msgsnd" and not args[3] & IPC_NOWAIT:
        _msg(graph, t, args[0] & 0xFFFFFFFF, receive=False, mtype=0)


def _in_ipc_namespace(t: Task, work: Callable[[], T]) -> T | None:
    """``work()`` in the waiter's IPC namespace; None when it cannot be joined."""
    from kpeek.sources.nsjoin import CLONE_NEWIPC, run_in_namespace, same_namespace

    try:
        if same_namespace(t.tgid, CLONE_NEWIPC):
            return work()
        return run_in_namespace(t.tgid, CLONE_NEWIPC, work)
    except OSError:
        return None


def _alive(graph: WaitGraph, pid: int) -> bool:
    return graph.task(pid) is not None or os.path.exists(f"/proc/{pid}")


def _semop(graph: WaitGraph, t: Task, semid: int, sops: int, nsops: int) -> None:
    from kpeek.sources.sysvipc import semaphores

    raw = read_user(t, sops, nsops * _SEMBUF.size) if nsops > 0 else None
    if raw is None:
        return
    # Only the operations that take (sem_op < 0) and would not sleep-fail.
    takes = [(num, op) for num, op, flags in _SEMBUF.iter_unpack(raw)
             if op < 0 and not flags & IPC_NOWAIT]
    sems = _in_ipc_namespace(t, lambda: semaphores(semid, sorted({n for n, _ in takes})))
    if not sems:
        return
    source = ("/proc/PID/syscall (semop), its sembufs through /proc/PID/mem, "
              "semctl GETVAL and GETPID in its IPC namespace")
    node = task_node(t.pid)
    for num, op in takes:
        sem = sems.get(num)
        if sem is None or sem.value >= -op or not sem.last_pid or sem.last_pid == t.tgid:
            continue  # not what blocks it, or no one else to name
        resource = f"SysV semaphore {num} of set {semid} (value {sem.value}, needs {-op})"
        if _alive(graph, sem.last_pid):
            graph.add(WaitEdge(node, proc_node(sem.last_pid), "sysv-sem", resource,
                               certain=False, relation="last taken by", source=source))
            continue
        root = f"none:sysv-sem:{semid}:{num}"
        graph.roots[root] = Root(
            "nobody", f"pid {sem.last_pid}, the last to take SysV semaphore {num} of set "
                      f"{semid}, has exited without giving it back",
            "post it (semop +1 or semctl SETVAL); take it with SEM_UNDO so that an exit "
            "gives it back")
        graph.add(WaitEdge(node, root, "sysv-sem", resource, certain=False,
                           note=f"its last taker, pid {sem.last_pid}, has exited",
                           source=source))


def _msg(graph: WaitGraph, t: Task, msqid: int, *, receive: bool, mtype: int) -> None:
    from kpeek.sources.sysvipc import message_queues

    queue = (_in_ipc_namespace(t, message_queues) or {}).get(msqid)
    if queue is None:
        return
    other = queue.last_sender if receive else queue.last_receiver
    if not other or other == t.tgid or not _alive(graph, other):
        return  # anyone allowed may send or receive: no one to name
    if receive:
        kind = f" of type {mtype}" if mtype > 0 else ""
        resource = f"a message{kind} on SysV queue {msqid}"
        relation = "whose last sender was"
    else:
        resource = f"room on SysV queue {msqid} ({queue.messages} messages, {queue.bytes} bytes)"
        relation = "whose last receiver was"
    graph.add(WaitEdge(task_node(t.pid), proc_node(other), "sysv-msg", resource, any_of=True,
                       certain=False, relation=relation,
                       source=f"/proc/PID/syscall ({'msgrcv' if receive else 'msgsnd'}), "
                              "/proc/sysvipc/msg in its IPC namespace"))
