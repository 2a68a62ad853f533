"""PID numbers and PID namespaces, from ``struct pid`` and ``struct pid_namespace``.

A ``struct pid`` has one ``struct upid`` {nr, ns} per namespace level, from
the initial namespace (level 0) down to the namespace the pid was made in
(``pid->level``). A pid's number as some namespace sees it is
``numbers[ns->level].nr`` when that entry's ns is that namespace
(the kernel's pid_nr_ns), else 0: the pid is not visible there.
"""

from __future__ import annotations

from kpeek.kernel.btf import Btf
from kpeek.kernel.layout import Layout
from kpeek.kernel.memory import KernelMemory

MAX_PID_NS_LEVEL = 32  # include/linux/pid_namespace.h


class PidReader:
    """Reads pid numbers; every struct pid and namespace is read once."""

    def __init__(self, btf: Btf, memory: KernelMemory) -> None:
        self.memory = memory
        pid = Layout(btf, "struct pid")
        self._level_at = pid.off("level")
        self._numbers_at = pid.off("numbers")
        upid = Layout(btf, "struct upid")
        self._upid_size = upid.size
        self._nr_at, self._ns_at = upid.off("nr"), upid.off("ns")
        self._ns = Layout(btf, "struct pid_namespace")
        self._pids: dict[int, list[tuple[int, int]]] = {}
        self._namespaces: dict[int, tuple[int, int]] = {}

    def numbers(self, pid: int) -> list[tuple[int, int]]:
        """[(nr, pid_namespace address)] of ``struct pid`` at ``pid``, level 0 first.

        Raises MemoryReadError; a level beyond the kernel's limit reads as
        corruption and raises ValueError.
        """
        found = self._pids.get(pid)
        if found is None:
            raw = self.memory.read(pid + self._level_at, 4)
            level = int.from_bytes(raw, "little")
            if level >= MAX_PID_NS_LEVEL:
                raise ValueError(f"struct pid at 0x{pid:x} has level {level}")
            size = self._upid_size
            raw = self.memory.read(pid + self._numbers_at, size * (level + 1))
            found = [
                (int.from_bytes(raw[i * size + self._nr_at : i * size + self._nr_at + 4],
                                "little", signed=True),
                 int.from_bytes(raw[i * size + self._ns_at : i * size + self._ns_at + 8],
                                "little"))
                for i in range(level + 1)
            ]  # fmt: skip
            self._pids[pid] = found
        return found

    def namespace(self, ns: int) -> tuple[int, int]:
        """(level, inode number) of the pid_namespace at ``ns``."""
        found = self._namespaces.get(ns)
        if found is None:
            raw = self.memory.read(ns, self._ns.span("level", "ns.inum"))
            found = (self._ns.int(raw, "level"), self._ns.int(raw, "ns.inum"))
            self._namespaces[ns] = found
        return found

    def global_nr(self, pid: int) -> int:
        """The number the initial namespace sees (0 for no pid)."""
        return self.numbers(pid)[0][0] if pid else 0

    def own(self, pid: int) -> tuple[int, int]:
        """(nr, pid_namespace address) in the namespace the pid was made in."""
        return self.numbers(pid)[-1]

    def nr_in(self, pid: int, ns: int) -> int:
        """pid_nr_ns: the number of ``pid`` in namespace ``ns``, 0 if not visible."""
        if not pid or not ns:
            return 0
        level, _ = self.namespace(ns)
        numbers = self.numbers(pid)
        if level < len(numbers) and numbers[level][1] == ns:
            return numbers[level][0]
        return 0
