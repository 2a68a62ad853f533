"""The one interface through which kpeek reads kernel memory.

Live readers (BPF, bpf_probe_read_kernel) and synthetic readers used in
tests implement :class:`KernelMemory`. A read that cannot be done raises
:class:`MemoryReadError`; it never crashes and never writes.
"""

from __future__ import annotations

from typing import Protocol

from kpeek.errors import UsageError


class MemoryReadError(UsageError):
    """An address that cannot be read (unmapped, not kernel memory, too big)."""

    def __init__(self, address: int, size: int, reason: str = "unreadable") -> None:
        super().__init__(f"cannot read {size} bytes at 0x{address:x}: {reason}")
        self.address = address
        self.size = size


class KernelMemory(Protocol):
    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address``, or raise MemoryReadError."""
        ...


class FakeMemory:
    """Synthetic kernel memory for tests of states a live kernel must not have.

    Holds non-overlapping byte regions; reading outside them fails like an
    unmapped kernel address would.
    """

    def __init__(self) -> None:
        self._regions: dict[int, bytearray] = {}

    def map(self, address: int, data: bytes) -> None:
        self._regions[address] = bytearray(data)

    def write(self, address: int, data: bytes) -> None:
        for base, buf in self._regions.items():
            if base <= address and address + len(data) <= base + len(buf):
                buf[address - base : address - base + len(data)] = data
                return
        raise MemoryReadError(address, len(data), "not mapped in fake memory")

    def read(self, address: int, size: int) -> bytes:
        for base, buf in self._regions.items():
            if base <= address and address + size <= base + len(buf):
                return bytes(buf[address - base : address - base + size])
        raise MemoryReadError(address, size, "not mapped")
