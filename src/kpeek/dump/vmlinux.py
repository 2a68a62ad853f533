"""A vmlinux given with ``--vmlinux``: its ``.BTF`` section for types, and its
``.symtab`` for symbols when the dump cannot locate kallsyms (kernels before
5.19). Link-time addresses move by VMCOREINFO's KERNELOFFSET (KASLR)."""

from __future__ import annotations

import struct
from array import array

from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.btf import Btf, BtfError
from kpeek.kernel.symbols import Kallsyms, kallsyms_tie_order

MAX_SECTION = 1 << 30
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2  # NOTYPE: linker marks (_stext, __start_BTF)
STB_GLOBAL, STB_WEAK = 1, 2
SHN_UNDEF, SHN_ABS = 0, 0xFFF1


def _sections(path: str, f) -> dict[str, tuple[int, int]]:
    """name -> (file offset, size) of each section of a 64-bit little-endian ELF."""
    head = f.read(64)
    if not head.startswith(b"\x7fELF") or head[4] != 2 or head[5] != 1:
        raise UsageError(f"{path}: not a 64-bit little-endian ELF vmlinux")
    shoff, = struct.unpack_from("<Q", head, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 58)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    headers = [struct.unpack_from("<IIQQQQ", table, i * shentsize)
               for i in range(len(table) // shentsize)]
    if shstrndx >= len(headers):
        raise UsageError(f"{path}: ELF section headers are damaged")
    f.seek(headers[shstrndx][4])
    names = f.read(headers[shstrndx][5])
    out = {}
    for name_at, _type, _flags, _addr, offset, size in headers:
        end = names.find(b"\0", name_at)
        out[names[name_at:end].decode("ascii", "replace")] = (offset, size)
    return out


def _section(path: str, name: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            where = _sections(path, f).get(name)
            if where is None or where[1] > MAX_SECTION:
                return None
            f.seek(where[0])
            return f.read(where[1])
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except struct.error:
        raise UsageError(f"{path}: not a usable vmlinux (damaged ELF headers)") from None


def vmlinux_btf(path: str) -> Btf:
    """The vmlinux's .BTF section (NotSupported when it has none)."""
    data = _section(path, ".BTF")
    if data is None:
        raise NotSupported(f"{path}: this vmlinux has no .BTF section (kpeek reads BTF, not "
                           "DWARF); add one with pahole -J")
    try:
        return Btf.from_bytes(data)
    except BtfError as e:
        raise UsageError(f"{path}: the vmlinux's .BTF is damaged ({e})") from None


def vmlinux_symbols(path: str, kernel_offset: int) -> Kallsyms:
    """Functions and objects of the vmlinux's .symtab, moved by ``kernel_offset``."""
    table, strings = _section(path, ".symtab"), _section(path, ".strtab")
    if not table or strings is None:
        raise NotSupported(f"{path}: this vmlinux has no symbol table (.symtab): it was stripped")
    entries: list[tuple[int, tuple, str, str]] = []
    words = array("Q", table[: len(table) // 24 * 24])
    for i in range(1, len(words) // 3):  # entry 0 is the null symbol
        first, value = words[3 * i], words[3 * i + 1]
        info, shndx = (first >> 32) & 0xFF, (first >> 48) & 0xFFFF
        kind = info & 0xF
        if kind not in (STT_NOTYPE, STT_FUNC, STT_OBJECT) or shndx in (SHN_UNDEF, SHN_ABS) \
                or not value:
            continue
        name_at = first & 0xFFFFFFFF
        end = strings.find(b"\0", name_at)
        if end == name_at:
            continue
        letter = "t" if kind == STT_FUNC else "d"
        name = strings[name_at:end].decode("utf-8", "replace")
        entries.append(((value + kernel_offset) & (2**64 - 1),
                        kallsyms_tie_order(name, info >> 4 == STB_WEAK),
                        letter.upper() if info >> 4 in (STB_GLOBAL, STB_WEAK) else letter, name))
    # The kernel's table order, so an address several symbols share is named
    # by the one the kernel prints (.symtab's own order is another).
    entries.sort()
    return Kallsyms([e[0] for e in entries], [e[2] for e in entries], [e[3] for e in entries])
