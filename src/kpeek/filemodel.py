"""The file tables of the model: descriptors, open files, inodes, and what lsof
shows besides (sockets, locks, files held without a descriptor).

Split from kpeek.model so that verbs without file tables (ps) do not build
these dataclasses; ``from kpeek.model import OpenFile`` still works.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kpeek.records import record

# _RECORDS: the records a whole-system snapshot makes by the hundred thousand
# (descriptors, open files, inodes, sockets, cwd/rtd/txt/mem rows) are plain
# slotted dataclasses, hashable by value, not frozen: a frozen one costs 7x
# as much to make (its __init__ sets each field through object.__setattr__),
# about 0.25 s of CPU at 5,000 processes. They are never changed after the
# source made them: derive with dataclasses.replace, as for the frozen rest.


@record(slots=True, unsafe_hash=True)  # see _RECORDS
class Inode:
    """An inode (the 'vnode table' entry), keyed by device and inode number."""

    id: str  # "major:minor:ino", stable for the life of the inode
    dev: int
    ino: int
    type: str  # regular, dir, pipe, socket, anon_inode, memfd, chardev, blockdev, fifo, symlink
    nlink: int | None = None
    size: int | None = None
    address: int | None = None


@record(slots=True, unsafe_hash=True)  # see _RECORDS
class OpenFile:
    """An open file description: the offset and flags that descriptors share.

    Where the source knows the struct file's address, ``id`` is the keyed
    hash that show_pointer shows for it (``"#" + id``): a renderer of a
    whole system's open files need not hash each address twice.
    """

    id: str  # keyed hash; equal ids <=> one struct file
    inode: str  # Inode.id
    path: str  # as /proc/PID/fd shows it, " (deleted)" included
    pos: int
    flags: int  # f_flags as fdinfo shows them (O_ACCMODE included, O_CLOEXEC excluded)
    mnt_id: int | None = None
    refcount: int | None = None  # f_count, when a source can read it
    f_mode: int | None = None
    address: int | None = None


@record(slots=True, unsafe_hash=True)  # see _RECORDS
class FileDescriptor:
    """One slot of a process's descriptor table."""

    tgid: int
    fd: int
    cloexec: bool
    open_file: str  # OpenFile.id


@record(slots=True, unsafe_hash=True)  # see _RECORDS
class Socket:
    """What a socket inode is: as ss(8) and lsof show it.

    ``state`` is the TCP state name (ESTABLISHED, LISTEN...) for TCP, and
    "connected"/"unconnected" for datagram sockets. ``peer`` is the inode
    number of the other end of a connected unix socket.
    """

    inode: int
    family: str  # unix, inet, inet6, netlink, packet
    type: str  # stream, dgram, seqpacket, raw
    protocol: str = ""  # tcp, udp, icmp..., a netlink family, an ethertype
    local: str = ""
    remote: str = ""
    state: str = ""
    path: str = ""  # unix: the bound name (abstract names start with "@")
    peer: int | None = None
    interface: str = ""  # packet sockets
    netns: int | None = None  # inode of its network namespace, when known


@record(frozen=True, slots=True)
class FileLock:
    """A lock from /proc/locks, with the descriptor that owns it when known.

    ``end`` None means to end of file. ``owners`` are the (tgid, fd) whose
    fdinfo lists the lock (every fd of the open file that placed it);
    ``waiters`` are the pids blocked on it.
    """

    kind: str  # POSIX, OFDLCK, FLOCK, LEASE
    mode: str  # READ, WRITE
    inode: str  # Inode.id
    pid: int  # as /proc/locks shows it (-1 for OFD locks)
    start: int
    end: int | None
    owners: tuple[tuple[int, int], ...] = ()
    waiters: tuple[int, ...] = ()

    @property
    def whole_file(self) -> bool:
        return self.start == 0 and self.end is None

    @property
    def letter(self) -> str:
        """lsof's lock column: r/w on part of the file, R/W on all of it."""
        letter = "r" if self.mode == "READ" else "w"
        return letter.upper() if self.whole_file else letter


@record(slots=True, unsafe_hash=True)  # see _RECORDS
class ProcessFile:
    """A file a process holds without a descriptor: lsof's cwd, rtd, txt, mem rows."""

    tgid: int
    kind: str  # cwd, rtd, txt, mem
    path: str
    inode: str = ""  # Inode.id ("major:minor:ino") when known


# A mapped file as a mem row shows it: (path, inode id).
Mapped = tuple[str, str]


class ProcessFileTable(Sequence[ProcessFile]):
    """The cwd/rtd/txt/mem rows of many processes (Snapshot.process_files),
    each process's kept as its own rows and a list of mapped files that the
    forks of one program share, the same list object: a whole system's
    100,000 mem rows are made one by one only for whoever iterates over
    them, and a renderer can tell each shared list once (:meth:`parts`)."""

    def __init__(self, parts: dict[int, tuple[list[ProcessFile], list[Mapped]]]) -> None:
        self._parts = parts
        self._flat: list[ProcessFile] | None = None

    def parts(self, tgid: int) -> tuple[list[ProcessFile], list[Mapped]]:
        """(tgid's own rows, its mapped files: mem rows after those)."""
        return self._parts.get(tgid, _NO_PARTS)

    def of(self, tgid: int) -> list[ProcessFile]:
        """The rows of one process, in order."""
        own, mapped = self._parts.get(tgid, _NO_PARTS)
        return [*own, *[ProcessFile(tgid, "mem", path, inode) for path, inode in mapped]]

    def by_process(self) -> dict[int, tuple[list[ProcessFile], list[Mapped]]]:
        """:meth:`parts` of every process it holds."""
        return self._parts

    def rows_by_process(self) -> dict[int, list[ProcessFile]]:
        return {tgid: self.of(tgid) for tgid in self._parts}

    def _rows(self) -> list[ProcessFile]:
        if self._flat is None:
            self._flat = [pf for tgid in self._parts for pf in self.of(tgid)]
        return self._flat

    def __len__(self) -> int:
        return sum(len(own) + len(mapped) for own, mapped in self._parts.values())

    def __getitem__(self, index):  # type: ignore[no-untyped-def]  # Sequence's overloads
        return self._rows()[index]

    def __iter__(self) -> Iterator[ProcessFile]:
        return iter(self._rows())


_NO_PARTS: tuple[list[ProcessFile], list[Mapped]] = ([], [])
