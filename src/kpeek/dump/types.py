"""The kernel's BTF types from the dump: the .BTF section in its memory
(``__start_BTF`` .. ``__stop_BTF``, byte-identical to vmlinux's), or a vmlinux
given with ``--vmlinux`` for a kernel built without CONFIG_DEBUG_INFO_BTF."""

from __future__ import annotations

import struct

from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.btf import Btf, BtfError, parse_btf_cached
from kpeek.kernel.memory import KernelMemory, MemoryReadError
from kpeek.kernel.symbols import Kallsyms

MAX_BTF = 64 << 20


def btf_from_memory(memory: KernelMemory, symbols: Kallsyms, origin: str) -> Btf:
    start, stop = symbols.address_of("__start_BTF"), symbols.address_of("__stop_BTF")
    if start is None or stop is None or not 0 < stop - start <= MAX_BTF:
        raise NotSupported(
            f"{origin}: the kernel has no BTF (built without CONFIG_DEBUG_INFO_BTF): "
            "give a vmlinux with BTF for this exact build with --vmlinux")
    try:
        return parse_btf_cached(memory.read(start, stop - start))
    except MemoryReadError as e:
        raise UsageError(f"{origin}: the kernel's BTF is not in the dump ({e})") from None
    except BtfError as e:
        raise UsageError(f"{origin}: the kernel's BTF in the dump is damaged ({e})") from None


def btf_from_vmlinux(path: str) -> Btf:
    """The .BTF section of a 64-bit little-endian ELF vmlinux."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if not head.startswith(b"\x7fELF") or head[4] != 2 or head[5] != 1:
                raise UsageError(f"{path}: not a 64-bit little-endian ELF vmlinux")
            shoff, = struct.unpack_from("<Q", head, 40)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 58)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize)
                        for i in range(len(table) // shentsize)]
            if shstrndx >= len(sections):
                raise UsageError(f"{path}: ELF section headers are damaged")
            f.seek(sections[shstrndx][4])
            names = f.read(sections[shstrndx][5])
            for name_at, _type, _flags, _addr, offset, size in sections:
                if names[name_at : name_at + 5] == b".BTF\0" and size <= MAX_BTF:
                    f.seek(offset)
                    return Btf.from_bytes(f.read(size))
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except (struct.error, BtfError) as e:
        raise UsageError(f"{path}: not a usable vmlinux ({e})") from None
    raise NotSupported(f"{path}: this vmlinux has no .BTF section (kpeek reads BTF, not DWARF); "
                       "make one with pahole -J")
