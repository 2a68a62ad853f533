"""The kernel's ORC unwind tables (x86-64), read from its own memory.

The kernel image carries two parallel arrays: ``orc_unwind_ip`` (s32
offsets, each relative to its own slot, sorted by the address they name)
and ``orc_unwind`` (one ``struct orc_entry`` each). The entry that covers an
address is the last one whose ip is <= it. Modules carry their own pair in
``mod->arch``. Entries are decoded through BTF's ``struct orc_entry``, whose
layout changed in 6.4 (``end`` bit and 2-bit types became a 3-bit type with
UNDEFINED and END_OF_STACK, plus ``signal``): both are handled.
"""

from __future__ import annotations

from kpeek.kernel.btf import Btf, Type, UnknownType
from kpeek.kernel.memory import KernelMemory, MemoryReadError
from kpeek.kernel.objects import Object
from kpeek.records import record

# ORC_REG_* (arch/x86/include/asm/orc_types.h, unchanged since 4.14)
REG_UNDEFINED, REG_PREV_SP, REG_DX, REG_DI, REG_BP, REG_SP = 0, 1, 2, 3, 4, 5
REG_R10, REG_R13, REG_BP_INDIRECT, REG_SP_INDIRECT = 6, 7, 8, 9
REG_NAMES = {REG_DX: "dx", REG_DI: "di", REG_R10: "r10", REG_R13: "r13"}

# Entry kinds, independent of the kernel's numbering (which changed in 6.4).
UNDEFINED, END, CALL, REGS, REGS_PARTIAL = "undefined", "end", "call", "regs", "regs_partial"
_TYPES_OLD = {0: CALL, 1: REGS, 2: REGS_PARTIAL}  # before 6.4: plus an `end` bit
_TYPES_NEW = {0: UNDEFINED, 1: END, 2: CALL, 3: REGS, 4: REGS_PARTIAL}

_CHUNK = 1 << 14  # bytes of the ip table read at a time


@record(frozen=True, slots=True)
class OrcEntry:
    """How to find the caller's frame from an address: see unwind_next_frame()."""

    sp_offset: int
    bp_offset: int
    sp_reg: int
    bp_reg: int
    kind: str
    signal: bool = False


# Where ORC has no entry the kernel assumes a frame-pointer frame.
FRAME_POINTER_ENTRY = OrcEntry(16, -16, REG_BP, REG_PREV_SP, CALL)


class OrcFormat:
    """The kernel's ``struct orc_entry`` as BTF describes it."""

    def __init__(self, btf: Btf) -> None:
        try:
            self.type: Type = btf.lookup("struct orc_entry")
        except UnknownType:
            raise UnknownType("the kernel's BTF has no struct orc_entry "
                              "(not an x86-64 kernel built with ORC)") from None
        names = {m.name for m in self.type.resolve().members}
        self.has_end_bit = "end" in names
        self.size = self.type.size

    def decode(self, memory: KernelMemory, address: int) -> OrcEntry:
        v = Object(self.type, address, memory).value()
        if self.has_end_bit:
            kind = END if v.get("end") else _TYPES_OLD.get(v["type"], UNDEFINED)
            if kind != END and v["sp_reg"] == REG_UNDEFINED:
                kind = UNDEFINED  # a null entry: the kernel stops with an error
        else:
            kind = _TYPES_NEW.get(v["type"], UNDEFINED)
        return OrcEntry(v["sp_offset"], v["bp_offset"], v["sp_reg"], v["bp_reg"], kind,
                        bool(v.get("signal", False)))


class OrcTable:
    """One pair of ORC arrays (the kernel's, or one module's) with ``count`` entries."""

    def __init__(self, memory: KernelMemory, fmt: OrcFormat, ip_table: int, entries: int,
                 count: int, name: str = "vmlinux") -> None:
        self.memory = memory
        self.format = fmt
        self.ip_table = ip_table
        self.entries = entries
        self.count = count
        self.name = name
        self._chunks: dict[int, bytes] = {}
        self.first_ip = self.ip(0) if count else 0
        self.last_ip = self.ip(count - 1) if count else 0

    def ip(self, index: int) -> int:
        """The address entry ``index`` starts to cover."""
        slot = self.ip_table + 4 * index
        chunk = (4 * index) // _CHUNK
        data = self._chunks.get(chunk)
        if data is None:
            start = chunk * _CHUNK
            size = min(_CHUNK, 4 * self.count - start)
            data = self.memory.read(self.ip_table + start, size)
            self._chunks[chunk] = data
        at = 4 * index - chunk * _CHUNK
        rel = int.from_bytes(data[at : at + 4], "little", signed=True)
        return (slot + rel) & 0xFFFF_FFFF_FFFF_FFFF

    def covers(self, address: int) -> bool:
        return self.count > 0 and self.first_ip <= address <= self.last_ip

    def find(self, address: int) -> OrcEntry | None:
        """The entry for ``address``: the last one starting at or before it."""
        if not self.covers(address):
            return None
        lo, hi = 0, self.count - 1
        while lo < hi:  # find the last index with ip(index) <= address
            mid = (lo + hi + 1) // 2
            if self.ip(mid) <= address:
                lo = mid
            else:
                hi = mid - 1
        try:
            return self.format.decode(self.memory, self.entries + lo * self.format.size)
        except MemoryReadError:
            return None


def vmlinux_table(memory: KernelMemory, btf: Btf, address_of) -> OrcTable | None:
    """The kernel image's own table, found by its section symbols (None without them).

    ``address_of(name)`` gives a symbol's address or None.
    """
    ips, stop, entries = (address_of(n) for n in (
        "__start_orc_unwind_ip", "__stop_orc_unwind_ip", "__start_orc_unwind"))
    if ips is None or stop is None or entries is None or stop <= ips:
        return None
    return OrcTable(memory, OrcFormat(btf), ips, entries, (stop - ips) // 4)


class OrcTables:
    """All ORC tables of a kernel: vmlinux first, then each module's."""

    def __init__(self, tables: list[OrcTable]) -> None:
        self.tables = tables

    def __bool__(self) -> bool:
        return bool(self.tables)

    def find(self, address: int) -> OrcEntry | None:
        for table in self.tables:
            if table.covers(address):
                return table.find(address)
        return None
