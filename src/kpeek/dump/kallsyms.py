"""The kernel's symbol table, decoded from the kallsyms tables in its memory.

The tables (scripts/kallsyms.c) are located through VMCOREINFO's SYMBOL()
entries (since 5.19): ``kallsyms_num_syms``; ``kallsyms_names``, one entry per
symbol: a length (one byte, or two when the first has bit 7 set, since 6.1)
then that many token numbers; ``kallsyms_token_index`` (256 u16 offsets) into
``kallsyms_token_table`` (NUL-terminated strings); the expanded name's first
character is its nm type. Addresses are ``kallsyms_offsets`` (s32) against
``kallsyms_relative_base``; with KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP) a
non-negative offset is an absolute per-CPU offset and a negative one is
``relative_base - 1 - offset``.
"""

from __future__ import annotations

import struct
from array import array

from kpeek.dump.vmcoreinfo import VmcoreInfo
from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.memory import KernelMemory, MemoryReadError
from kpeek.kernel.symbols import Kallsyms

TABLES = ("kallsyms_num_syms", "kallsyms_names", "kallsyms_token_table",
          "kallsyms_token_index", "kallsyms_offsets", "kallsyms_relative_base")
MAX_SYMBOLS = 4 << 20
CHUNK = 1 << 20


class _Stream:
    """Bytes at ``address`` read a chunk at a time, as the decoder asks."""

    def __init__(self, memory: KernelMemory, address: int) -> None:
        self._memory, self._address, self.data = memory, address, b""

    def need(self, end: int) -> bytes:
        while len(self.data) < end:
            self.data += self._memory.read(self._address + len(self.data), CHUNK)
        return self.data


def _tokens(memory: KernelMemory, table: int, index: int) -> list[str]:
    offsets = struct.unpack("<256H", memory.read(index, 512))
    raw = memory.read(table, max(offsets) + 256)
    out = []
    for at in offsets:
        end = raw.find(b"\0", at)
        out.append(raw[at:end].decode("ascii", "replace"))
    return out


def _names(memory: KernelMemory, address: int, count: int, tokens: list[str]) -> list[str]:
    stream = _Stream(memory, address)
    data = stream.need(CHUNK)
    spans, at = [], 0
    for _ in range(count):
        if at + 2 > len(data):
            data = stream.need(at + 2)
        length = data[at]
        at += 1
        if length & 0x80:  # a long symbol (6.1+): 7 bits here, the rest in the next byte
            length = (length & 0x7F) | (data[at] << 7)
            at += 1
        if at + length > len(data):
            data = stream.need(at + length)
        spans.append((at, at + length))
        at += length
    # Expand every token at once: one str.translate over the token bytes of all
    # names (as latin-1 code points), names kept apart by U+0100, outside the bytes.
    text = data.decode("latin-1")
    table: dict[int, str] = dict(enumerate(tokens))
    table[0x100] = "\n"
    return "\u0100".join([text[a:b] for a, b in spans]).translate(table).split("\n")


def decode_kallsyms(memory: KernelMemory, info: VmcoreInfo, origin: str) -> Kallsyms:
    """Every symbol of the kernel image (not modules') from the dump's memory."""
    where = {name: info.symbol(name) for name in TABLES}
    missing = [name for name, address in where.items() if address is None]
    if missing:
        raise NotSupported(
            f"{origin}: VMCOREINFO does not locate {', '.join(missing)} (kernels before 5.19 "
            "do not list them): give the kernel's vmlinux with --vmlinux")
    try:
        count = struct.unpack("<I", memory.read(where["kallsyms_num_syms"], 4))[0]
        if not 0 < count <= MAX_SYMBOLS:
            raise UsageError(f"{origin}: kallsyms_num_syms reads {count}: a damaged dump?")
        base = struct.unpack("<Q", memory.read(where["kallsyms_relative_base"], 8))[0]
        offsets = array("i", memory.read(where["kallsyms_offsets"], 4 * count))
        tokens = _tokens(memory, where["kallsyms_token_table"], where["kallsyms_token_index"])
        names = _names(memory, where["kallsyms_names"], count, tokens)
    except MemoryReadError as e:
        raise UsageError(f"{origin}: the kallsyms tables are not readable ({e})") from None
    if any(o < 0 for o in offsets):  # KALLSYMS_ABSOLUTE_PERCPU
        addresses = [o if o >= 0 else base - 1 - o for o in offsets]
    else:
        addresses = [base + (o & 0xFFFFFFFF) for o in offsets]
    kinds = [name[:1] or "?" for name in names]
    return Kallsyms(addresses, kinds, [name[1:] for name in names])
