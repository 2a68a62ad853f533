"""Plain model of kernel state: what every source produces and every view reads.

Sources (live /proc, live BPF, later crash dumps) fill these dataclasses,
frozen but for the file-table records made by the hundred thousand (see
kpeek.filemodel), never changed once made; diagnoses and renderers read only
them. Names that come from the kernel (comm, paths) are ``str`` decoded with
surrogateescape (see textsafe).
Kernel addresses, where a source knows them, are kept raw here and are hashed
by the views (see ids.show_pointer).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import field, replace
from functools import cached_property
from itertools import groupby
from operator import attrgetter

from kpeek.records import record

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

    from kpeek.filemodel import FileDescriptor, FileLock, Inode, OpenFile, ProcessFile, Socket

# The classes of the file tables live in kpeek.filemodel and load on first use
# (kpeek ps never needs them: six dataclasses are 5 ms of its start-up); they
# are importable from here as before.
_FILE_TABLE = frozenset(("Inode", "OpenFile", "FileDescriptor", "Socket", "FileLock",
                         "ProcessFile"))


def __getattr__(name: str) -> Any:
    if name in _FILE_TABLE:
        from kpeek import filemodel

        return getattr(filemodel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# One-letter task states as /proc shows them, with their long names for JSON.
STATE_NAMES: Mapping[str, str] = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "T": "stopped",
    "t": "tracing-stop",
    "X": "dead",
    "Z": "zombie",
    "P": "parked",
    "I": "idle",
}


@record(frozen=True, slots=True)
class Namespace:
    """A namespace, identified by the inode number of /proc/PID/ns/<kind>."""

    kind: str
    inode: int

    @property
    def id(self) -> str:
        return f"{self.kind}:[{self.inode}]"


@record(frozen=True, slots=True)
class Usage:
    """What ps shows besides ids: CPU time, memory, command line."""

    utime: int  # clock ticks
    stime: int  # clock ticks
    rss: int  # bytes
    vsz: int  # bytes
    cmdline: tuple[str, ...] = ()  # empty for kernel threads and zombies


# Made by the thousand (a task each): a plain slotted dataclass, as the file
# records (see kpeek.filemodel): frozen, its __init__ cost 27 ms of 5,000
# tasks, plain 8 ms. Never changed once made all the same.
@record(slots=True, unsafe_hash=True)
class Task:
    """A kernel task: a process (pid == tgid) or one of its threads.

    Global ids are as seen from the initial PID namespace; the ``ns_*`` ids
    are as seen from inside the task's own PID namespace (0 when the parent
    or group leader lives outside it, as the kernel reports it).
    """

    pid: int
    tgid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    state: str
    pidns: int
    ns_pid: int
    ns_tgid: int
    ns_ppid: int
    ns_pgid: int
    ns_sid: int
    uid: int = 0
    wchan: str | None = None
    start_time: int = 0  # clock ticks since boot, from /proc/PID/stat
    namespaces: tuple[Namespace, ...] = ()
    kernel_stack: tuple[str, ...] | None = None  # "symbol+0xoff/0xsize" lines
    blocker: int | None = None  # task_struct.blocker, when a source can read it
    address: int | None = None  # task_struct address, when a source knows it
    usage: Usage | None = None  # CPU time and memory, when read (kpeek ps)
    # What /proc/PID/syscall, sched, stat and status say, when a source read
    # them with the task (BPF); None: ask /proc. ``syscall`` is (nr, 6 args),
    # nr -1 when the task is running or in no system call.
    syscall: tuple[int, ...] | None = None
    exec_start: int | None = None  # se.exec_start, ns of the scheduler clock
    cpu: int | None = None  # the CPU it last ran on
    tracer: int | None = None  # tgid of its tracer, 0 when not traced

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "unknown")


@record(frozen=True)
class Snapshot:
    """Everything one source saw at one moment.

    ``vanished`` counts tasks and descriptors that went away while the
    snapshot was taken (normal on a busy system, not an error). ``notes``
    says what this source could not see.
    """

    source: str
    tasks: tuple[Task, ...]
    fds: tuple[FileDescriptor, ...] = ()
    open_files: Mapping[str, OpenFile] = field(default_factory=dict)
    inodes: Mapping[str, Inode] = field(default_factory=dict)
    vanished: int = 0
    notes: tuple[str, ...] = ()
    taken_at: float = field(default_factory=time.time)
    # Facts lsof shows beyond the three tables (filled by sources.fdfacts):
    sockets: Mapping[int, Socket] = field(default_factory=dict)  # by inode number
    locks: tuple[FileLock, ...] = ()
    process_files: Sequence[ProcessFile] = ()  # a ProcessFileTable from sources.fdfacts
    details: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # by OpenFile.id
    # Ids of the inodes with a file-lock context (some lock was taken on them
    # since they were read in): the only ones /proc/locks can name. None:
    # the source cannot tell (/proc).
    lock_contexts: frozenset[str] | None = None

    def derive(self, **changes: Any) -> Snapshot:
        """``dataclasses.replace(self, **changes)`` that keeps the indexes
        built so far which do not depend on what changes (a whole-system
        snapshot's descriptor indexes cost 20 ms per 65,000 descriptors)."""
        new = replace(self, **changes)
        for name, inputs in _INDEX_INPUTS.items():
            if name in self.__dict__ and not inputs & changes.keys():
                new.__dict__[name] = self.__dict__[name]
        return new

    def processes(self) -> Iterator[Task]:
        """Thread-group leaders only."""
        return (t for t in self.tasks if not t.is_thread)

    def task(self, pid: int) -> Task | None:
        return self._tasks_by_pid.get(pid)

    def fds_of(self, tgid: int) -> list[FileDescriptor]:
        """The descriptor table of one process, by fd number."""
        return self._fds_by_tgid.get(tgid, [])

    def holders(self, open_file: str) -> list[FileDescriptor]:
        """Every descriptor, in any process, that refers to ``open_file``."""
        return self._fds_by_file.get(open_file, [])

    # Indexes built on first use (cached_property writes the instance dict
    # directly, so it works on a frozen dataclass).
    @cached_property
    def _tasks_by_pid(self) -> dict[int, Task]:
        return {t.pid: t for t in self.tasks}

    @cached_property
    def _fds_by_tgid(self) -> dict[int, list[FileDescriptor]]:
        ordered = sorted(self.fds, key=attrgetter("tgid", "fd"))  # keys made in C
        return {tgid: list(fds) for tgid, fds in groupby(ordered, attrgetter("tgid"))}

    @cached_property
    def _fds_by_file(self) -> dict[str, list[FileDescriptor]]:
        index: dict[str, list[FileDescriptor]] = defaultdict(list)
        for d in self.fds:
            index[d.open_file].append(d)
        return dict(index)


# Each cached index of a Snapshot and the fields it is built from (see derive).
_INDEX_INPUTS = {
    "_tasks_by_pid": {"tasks"},
    "_fds_by_tgid": {"fds"},
    "_fds_by_file": {"fds"},
}
