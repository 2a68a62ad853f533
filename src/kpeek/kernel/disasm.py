"""Disassembly of kernel code bytes (an oops' ``Code:`` line) with capstone.

``disassemble`` decodes raw bytes; ``disassemble_around`` handles the usual
oops case where the bytes start mid-instruction and one byte is marked as
the start of the faulting instruction: it tries a few starting points and
keeps the decoding that lands exactly on the marked byte.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import capstone

from kpeek.records import record

ARCHES = ("x86_64", "arm64", "arm-thumb", "arm")
# How many leading bytes we may drop to find an instruction boundary.
_MAX_LEFT_CUT = 8


@record(frozen=True)
class Instruction:
    """One decoded instruction. ``valid`` is False for bytes that do not decode."""

    address: int
    size: int
    mnemonic: str
    operands: str
    raw: bytes
    valid: bool = True
    symbol: str | None = None  # symbolized branch target or address, when known

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.operands}".strip()


@cache
def _engine(arch: str) -> capstone.Cs:
    # One engine per architecture: making one costs more than decoding a Code: line.
    if arch == "x86_64":
        return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    if arch == "arm64":
        return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    if arch == "arm-thumb":
        return capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB)
    if arch == "arm":
        return capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM)
    raise ValueError(f"unsupported architecture {arch!r}; known: {', '.join(ARCHES)}")


def disassemble(code: bytes, address: int,
                symbolize: Callable[[int], str | None] | None = None,
                arch: str = "x86_64") -> list[Instruction]:
    """Decode all of ``code`` as if loaded at ``address``.

    Bytes that do not decode become one-byte (x86) or one-word (arm)
    entries with ``valid=False`` and decoding resumes after them, so the
    result always covers every byte. ``symbolize`` maps an address to a
    name for branch targets. Raises ValueError for an unknown ``arch``.
    """
    md = _engine(arch)
    step = 1 if arch == "x86_64" else (2 if arch == "arm-thumb" else 4)
    out: list[Instruction] = []
    offset = 0
    while offset < len(code):
        decoded = False
        for insn in md.disasm(code[offset:], address + offset):
            symbol = None
            if symbolize is not None and insn.op_str.startswith("0x"):
                try:
                    symbol = symbolize(int(insn.op_str.split(",")[0], 16))
                except ValueError:
                    symbol = None
            out.append(Instruction(insn.address, insn.size, insn.mnemonic, insn.op_str,
                                   bytes(insn.bytes), True, symbol))
            offset += insn.size
            decoded = True
        if offset < len(code):
            # capstone stops at the first undecodable bytes: record them and go on.
            bad = code[offset:offset + step]
            out.append(Instruction(address + offset, len(bad), "(bad)", "", bad, False))
            offset += len(bad)
        elif not decoded:
            break
    return out


@record(frozen=True)
class Listing:
    """Instructions around a faulting one; ``fault_index`` points at it."""

    instructions: list[Instruction]
    fault_index: int
    skipped: int  # leading bytes dropped to find an instruction boundary


def disassemble_around(code: bytes, fault_offset: int, arch: str = "x86_64",
                       address: int = 0,
                       symbolize: Callable[[int], str | None] | None = None) -> Listing | None:
    """Decode ``code`` so that an instruction starts at ``fault_offset``.

    ``address`` is the address of ``code[0]``. Returns None when no
    starting point up to 8 bytes in lines up with the faulting byte.
    """
    if not 0 <= fault_offset < len(code):
        return None
    best: Listing | None = None
    for cut in range(0, min(fault_offset, _MAX_LEFT_CUT) + 1):
        insns = disassemble(code[cut:], address + cut, symbolize, arch)
        target = address + fault_offset
        index = next((i for i, ins in enumerate(insns) if ins.address == target), -1)
        if index < 0:
            continue
        clean = all(ins.valid for ins in insns[:index])
        if best is None or clean:
            best = Listing(insns, index, cut)
        if clean:
            break
    return best
