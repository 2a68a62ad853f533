"""The ELF notes of a dump file (PT_NOTE segments of an ELF vmcore)."""

from __future__ import annotations

import struct

PT_NOTE = 4
MAX_NOTES = 64 << 20


def elf_notes(path: str) -> bytes | None:
    """The concatenated PT_NOTE segments of an ELF64 little-endian file, or None
    when the file is not one (a kdump-compressed dump keeps its notes elsewhere)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            blob = b""
            for i in range(phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
                    "<IIQQQQ", table, i * phentsize)
                if p_type == PT_NOTE and p_filesz <= MAX_NOTES:
                    f.seek(p_offset)
                    blob += f.read(p_filesz)
            return blob
    except (OSError, struct.error):
        return None
