"""Tasks from /proc: one Task per process or thread.

Every read may fail because the task exited; callers get ``None`` for a
task that vanished and count it, they never see a half-read task.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from kpeek.model import Namespace, Task
from kpeek.sources import BLOCKED
from kpeek.textsafe import decode

NAMESPACE_KINDS = ("pid", "mnt", "net", "ipc", "uts", "user", "cgroup", "time")


class Vanished(Exception):
    """The task (or descriptor) went away while it was being read."""


# What /proc raises when a task exits between two reads of it.
GONE = (FileNotFoundError, ProcessLookupError)


def read_bytes(path: str, small: bool = False) -> bytes:
    """Whole file in one or a few reads; Vanished when the task is gone.

    ``small``: the file is one record that usually fits one 4 KiB read (stat,
    status, wchan, fdinfo), so a shorter read is all of it and the read that
    would only see end-of-file is skipped. Not for files of many records
    (maps): a read there may stop short before the end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except GONE as e:
        raise Vanished(path) from e
    try:
        chunks = []
        while True:
            try:
                chunk = os.read(fd, 4096 if small else 65536)
            except GONE as e:
                raise Vanished(path) from e
            if not chunk:
                break
            chunks.append(chunk)
            if small and len(chunk) < 4096:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def list_pids(directory: str = "/proc") -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    except GONE:  # /proc/PID/task of a process that exited
        return []


def parse_stat(raw: bytes) -> tuple[str, list[bytes]]:
    """(comm, fields after comm) from /proc/PID/stat; comm may hold ')' and spaces."""
    open_paren = raw.index(b"(")
    close_paren = raw.rindex(b")")
    comm = decode(raw[open_paren + 1 : close_paren])
    return comm, raw[close_paren + 2 :].split()


def parse_status(raw: bytes) -> dict[bytes, bytes]:
    fields = {}
    for line in raw.split(b"\n"):
        key, sep, value = line.partition(b":")
        if sep:
            fields[key] = value.strip()
    return fields


# The lines of /proc/PID/status a Task is made of (of some fifty), each after
# a newline (the text is searched with one put before it): a third of the
# cost of ^ in MULTILINE mode, which tries the names at every position.
_TASK_STATUS = re.compile(rb"\n(Pid|Tgid|Uid|NStgid|NSpid|NSpgid|NSsid):[ \t]*([^\n]*)")


def _ns_ids(status: dict[bytes, bytes], key: bytes, fallback: int) -> list[int]:
    value = status.get(key)
    return [int(x) for x in value.split()] if value else [fallback]


def pid_namespace(base: str) -> int:
    try:
        return os.stat(f"{base}/ns/pid").st_ino
    except GONE as e:
        raise Vanished(base) from e
    except PermissionError:
        return 0


def namespaces(base: str) -> tuple[Namespace, ...]:
    found = []
    for kind in NAMESPACE_KINDS:
        try:
            found.append(Namespace(kind, os.stat(f"{base}/ns/{kind}").st_ino))
        except OSError:
            continue
    return tuple(found)


def read_stack(base: str) -> tuple[str, ...] | None:
    """Kernel stack lines without the '[<0>] ' prefix; None when not permitted."""
    try:
        raw = read_bytes(f"{base}/stack")
    except PermissionError:
        return None
    frames = []
    for line in raw.decode("ascii", "replace").splitlines():
        _, _, frame = line.partition("] ")
        frames.append(frame or line)
    return tuple(frames)


def read_task(
    base: str, *, stacks: bool | str = False, all_namespaces: bool = False
) -> tuple[Task, tuple[int, ...]]:
    """The Task at ``base`` (/proc/PID or /proc/PID/task/TID) and its NSpid list.

    ns_ppid is left 0 here: it needs the parent's NSpid (see
    :func:`ns_ppid`). Raises Vanished when the task exits during the read.
    """
    comm, f = parse_stat(read_bytes(f"{base}/stat", small=True))
    raw_status = read_bytes(f"{base}/status", small=True)
    status = {k: v.strip() for k, v in _TASK_STATUS.findall(b"\n" + raw_status)}
    pid = int(status[b"Pid"])
    tgid = int(status[b"Tgid"])
    nspid = _ns_ids(status, b"NSpid", pid)
    try:
        wchan = read_bytes(f"{base}/wchan", small=True).decode("ascii", "replace")
    except PermissionError:
        wchan = ""
    uid_field = status.get(b"Uid", b"0").split()
    state = f[0].decode()
    stack = None
    if stacks is True or (stacks == BLOCKED and state == "D"):
        stack = read_stack(base)
    elif stacks:
        stack = ()  # BLOCKED, and not in D state: not wanted (None means unreadable)
    return Task(
        pid=pid,
        tgid=tgid,
        ppid=int(f[1]),
        pgid=int(f[2]),
        sid=int(f[3]),
        comm=comm,
        state=state,
        pidns=pid_namespace(base),
        ns_pid=nspid[-1],
        ns_tgid=_ns_ids(status, b"NStgid", tgid)[-1],
        ns_ppid=0,
        ns_pgid=_ns_ids(status, b"NSpgid", int(f[2]))[-1],
        ns_sid=_ns_ids(status, b"NSsid", int(f[3]))[-1],
        uid=int(uid_field[0]) if uid_field else 0,
        wchan=wchan if wchan and wchan != "0" else None,
        start_time=int(f[19]),
        namespaces=namespaces(base) if all_namespaces else (),
        kernel_stack=stack,
    ), tuple(nspid)


def ns_ppid(nspids: tuple[int, ...], parent_nspids: tuple[int, ...] | None) -> int:
    """The parent's pid as seen from inside the child's PID namespace.

    NSpid lists a task's pids from the outermost namespace inwards; a parent
    in the same namespace has an entry at the child's depth, a parent outside
    it has none and is seen as 0 (as getppid() returns inside a container).
    """
    depth = len(nspids)
    if parent_nspids is None or len(parent_nspids) < depth:
        return 0
    return parent_nspids[depth - 1]


def nspids_of(pid: int) -> tuple[int, ...] | None:
    """NSpid of one process, None if it is gone (or is pid 0, the kernel)."""
    if pid <= 0:
        return None
    try:
        status = parse_status(read_bytes(f"/proc/{pid}/status"))
    except (Vanished, PermissionError):
        return None
    return tuple(_ns_ids(status, b"NSpid", pid))


def iter_tasks(
    tgids: list[int], *, threads: bool, stacks: bool | str, all_namespaces: bool
) -> Iterator[tuple[Task, tuple[int, ...]] | None]:
    """(task, NSpid) for each task of ``tgids``; None for each that vanished."""
    for tgid in tgids:
        bases = [f"/proc/{tgid}"]
        if threads:
            tids = list_pids(f"/proc/{tgid}/task")
            bases = [f"/proc/{tgid}/task/{tid}" for tid in tids] or bases
        for base in bases:
            try:
                yield read_task(base, stacks=stacks, all_namespaces=all_namespaces)
            except Vanished:
                yield None
