"""What kind of dump a file is, and the notes in it, read from its headers.

Three formats: an ELF core (``/proc/vmcore`` copied by kdump, QEMU's
``dump-guest-memory``, ``virsh dump --memory-only``), a kdump-compressed file
(makedumpfile, QEMU's kdump-* formats after ``makedumpfile -R``), and
makedumpfile's flattened stream (QEMU 7.2 writes kdump-zlib so). The pages
themselves are read by drgn; this module only checks the file and finds the
ELF notes: VMCOREINFO and each CPU's PRSTATUS (its registers at the dump).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import field

from kpeek.dump.vmcoreinfo import VmcoreInfo
from kpeek.errors import NotSupported, UsageError
from kpeek.records import record

ELF_MAGIC = b"\x7fELF"
KDUMP_MAGIC = b"KDUMP   "
FLATTENED_MAGIC = b"makedumpfile"
EM_X86_64 = 62
ET_CORE = 4
PT_LOAD, PT_NOTE = 1, 4
NT_PRSTATUS = 1
MAX_NOTES_SIZE = 64 << 20
# e_machine numbers of the architectures dumps commonly come from
_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 21: "ppc64", 22: "s390x",
             243: "riscv64", 258: "loongarch64"}


@record(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes


@record
class DumpFile:
    """A dump's format, its notes and its VMCOREINFO (None when it has none)."""

    path: str
    kind: str  # "elf", "kdump" or "flattened"
    notes: list[Note] = field(default_factory=list)
    vmcoreinfo: VmcoreInfo | None = None

    @property
    def prstatus(self) -> list[bytes]:
        """Each CPU's ``struct elf_prstatus``, in CPU order."""
        return [n.desc for n in self.notes if n.name == "CORE" and n.type == NT_PRSTATUS]


def parse_notes(data: bytes) -> list[Note]:
    """The ELF notes in a PT_NOTE segment (4-byte aligned, as Linux writes them)."""
    notes, at = [], 0
    while at + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, at)
        at += 12
        name_end = at + namesz
        desc_at = at + (namesz + 3) // 4 * 4
        desc_end = desc_at + descsz
        if namesz == 0 and descsz == 0:
            break
        if desc_end > len(data):
            break  # a torn last note: keep what came before
        notes.append(Note(data[at:name_end].rstrip(b"\0").decode("ascii", "replace"), kind,
                          data[desc_at:desc_end]))
        at = desc_at + (descsz + 3) // 4 * 4
    return notes


def _read_at(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _elf(path: str, f, size: int) -> DumpFile:
    ident = _read_at(f, 0, 64)
    if len(ident) < 64:
        raise UsageError(f"{path}: truncated: the ELF header is cut short")
    if ident[4] != 2 or ident[5] != 1:
        raise NotSupported(f"{path}: a 32-bit or big-endian ELF file; kpeek reads x86-64 dumps")
    e_type, e_machine = struct.unpack_from("<HH", ident, 16)
    if e_machine != EM_X86_64:
        arch = _MACHINES.get(e_machine, f"machine {e_machine}")
        raise NotSupported(f"{path}: a dump of an {arch} kernel; kpeek reads x86-64 dumps only")
    if e_type != ET_CORE:
        raise UsageError(f"{path}: an ELF file but not a core dump (a vmlinux? give it with "
                         "--vmlinux, and the dump with -c)")
    phoff, = struct.unpack_from("<Q", ident, 32)
    phentsize, phnum = struct.unpack_from("<HH", ident, 54)
    headers = _read_at(f, phoff, phentsize * phnum)
    if len(headers) < phentsize * phnum:
        raise UsageError(f"{path}: truncated: the program headers are cut short")
    notes: list[Note] = []
    end = 0
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", headers, i * phentsize)
        end = max(end, p_offset + p_filesz)
        if p_type == PT_NOTE and p_filesz <= MAX_NOTES_SIZE:
            notes += parse_notes(_read_at(f, p_offset, p_filesz))
    if end > size:
        raise UsageError(f"{path}: truncated: the dump needs {end} bytes but the file has "
                         f"{size} (an interrupted copy?)")
    return DumpFile(path, "elf", notes, _vmcoreinfo(notes))


def _kdump(path: str, f, size: int) -> DumpFile:
    head = _read_at(f, 0, 464)
    if len(head) < 464:
        raise UsageError(f"{path}: truncated: the kdump header is cut short")
    version, = struct.unpack_from("<i", head, 8)
    machine = head[12 + 4 * 65 : 12 + 5 * 65].split(b"\0")[0].decode("ascii", "replace")
    if machine and machine != "x86_64":
        raise NotSupported(f"{path}: a dump of an {machine} kernel; kpeek reads x86-64 dumps only")
    block_size, = struct.unpack_from("<i", head, 428)
    if not 0 < block_size <= 1 << 20:
        raise UsageError(f"{path}: not a kdump file (block size {block_size})")
    sub = _read_at(f, block_size, 64)
    notes: list[Note] = []
    info = None
    if version >= 3 and len(sub) >= 48:
        at, length = struct.unpack_from("<qQ", sub, 32)
        if 0 < length <= MAX_NOTES_SIZE and at + length <= size:
            info = VmcoreInfo.parse(_read_at(f, at, length))
    if version >= 4 and len(sub) >= 64:
        at, length = struct.unpack_from("<qQ", sub, 48)
        if 0 < length <= MAX_NOTES_SIZE and at + length <= size:
            notes = parse_notes(_read_at(f, at, length))
    _check_kdump_size(path, f, head, size)
    return DumpFile(path, "kdump", notes, info or _vmcoreinfo(notes))


def _check_kdump_size(path: str, f, head: bytes, size: int) -> None:
    """A kdump file cut short (an interrupted copy) loses its last pages: the
    last page descriptor (one per dumped page, in file order) says where the
    data must end."""
    if isinstance(f, io.BytesIO):  # the flattened stream's headers alone: no pages here
        return
    block_size, sub_blocks, bitmap_blocks = struct.unpack_from("<iiI", head, 428)
    bitmaps_at = block_size * (1 + sub_blocks)
    half = bitmap_blocks * block_size // 2
    if bitmaps_at + 2 * half > size:
        raise UsageError(f"{path}: truncated: the file ends inside its page bitmaps")
    pages = int.from_bytes(_read_at(f, bitmaps_at + half, half), "little").bit_count()
    descs_at = bitmaps_at + 2 * half
    last = _read_at(f, descs_at + 24 * (pages - 1), 24) if pages else b""
    if pages and len(last) < 24:
        raise UsageError(f"{path}: truncated: the file ends inside its page table")
    if pages:
        offset, length = struct.unpack_from("<qI", last)
        if offset + length > size:
            raise UsageError(f"{path}: truncated: the dump needs {offset + length} bytes but "
                             f"the file has {size} (an interrupted copy?)")


def _vmcoreinfo(notes: list[Note]) -> VmcoreInfo | None:
    for note in notes:
        if note.name == "VMCOREINFO":
            return VmcoreInfo.parse(note.desc)
    return None


def identify(path: str) -> DumpFile:
    """The dump at ``path``, checked. UsageError for a file that is not a dump
    or is cut short; NotSupported for a dump kpeek cannot read (other architecture)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(16)
            if magic.startswith(ELF_MAGIC):
                return _elf(path, f, size)
            if magic.startswith(KDUMP_MAGIC):
                return _kdump(path, f, size)
            if magic.startswith(FLATTENED_MAGIC):
                return _flattened(path, f)
    except IsADirectoryError:
        raise UsageError(f"{path}: a directory, not a dump") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    raise UsageError(f"{path}: not a crash dump (neither an ELF core nor a kdump file)")


def _flattened(path: str, f) -> DumpFile:
    """makedumpfile's flattened stream: records of (offset, size, data) after a
    4 KiB header. The kdump header and its notes sit in the first records."""
    f.seek(4096)
    pieces: dict[int, bytes] = {}
    for _ in range(64):  # the headers come first; stop long before the pages
        head = f.read(16)
        if len(head) < 16:
            break
        offset, size = struct.unpack(">qq", head)
        if offset < 0 or size < 0 or size > MAX_NOTES_SIZE:
            break
        pieces[offset] = f.read(size)
    image = bytearray()
    for offset in sorted(pieces):
        if offset > len(image) + (16 << 20):
            break
        if offset > len(image):
            image += bytes(offset - len(image))
        image[offset : offset + len(pieces[offset])] = pieces[offset]

    found = _kdump(path, io.BytesIO(bytes(image)), len(image))
    found.kind = "flattened"
    return found
