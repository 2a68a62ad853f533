"""Who could wake a wait on a shared futex: every process that maps the same
memory.

A process-shared mutex, condition variable or semaphore lives in memory that
several processes map (MAP_SHARED of a file, shared anonymous memory, System V
or POSIX shared memory); the kernel keys such a futex by the backing inode and
the offset in it, so the processes that could wake it are those whose
/proc/PID/maps has a shared mapping of that inode covering that offset.
"""

from __future__ import annotations

from collections.abc import Iterable

Key = tuple[bytes, bytes]  # (device "MM:mm", inode number) as maps shows them


def _shared_lines(tgid: int) -> Iterable[tuple[int, int, int, Key]]:
    """(start, end, file offset, key) of each shared mapping with an inode."""
    try:
        with open(f"/proc/{tgid}/maps", "rb") as f:
            data = f.read()
    except OSError:
        return
    for line in data.splitlines():
        # address perms offset dev inode [path]
        fields = line.split(None, 5)
        if len(fields) < 5 or fields[1][3:4] != b"s" or fields[4] == b"0":
            continue
        start, _, end = fields[0].partition(b"-")
        yield int(start, 16), int(end, 16), int(fields[2], 16), (fields[3], fields[4])


def mapping_at(tgid: int, address: int) -> tuple[Key, int] | None:
    """(backing inode, offset in it) of the shared mapping of ``tgid`` that holds
    ``address``; None when it is private memory (only the process sees it)."""
    for start, end, offset, key in _shared_lines(tgid):
        if start <= address < end:
            return key, offset + address - start
    return None


class SharedMappers:
    """Which processes map which shared memory, read on first use (only a wait
    on a shared futex needs it)."""

    def __init__(self, tgids: Iterable[int]) -> None:
        self._tgids = list(tgids)
        self._index: dict[Key, list[tuple[int, int, int]]] | None = None

    def of(self, key: Key, offset: int) -> list[int]:
        """The processes with a shared mapping of ``key`` covering ``offset``."""
        if self._index is None:
            self._index = {}
            for tgid in self._tgids:
                for start, end, first, k in _shared_lines(tgid):
                    self._index.setdefault(k, []).append((tgid, first, first + end - start))
        ranges = self._index.get(key, ())
        return sorted({tgid for tgid, first, last in ranges if first <= offset < last})
