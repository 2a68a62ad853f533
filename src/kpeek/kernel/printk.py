"""The kernel log, read from memory: the lockless printk ring buffer (5.10+).

``prb`` points to a ``struct printk_ringbuffer``: a ring of descriptors
(``desc_ring.descs``, each with a state word and the logical positions of its
text block) beside a ring of ``struct printk_info`` (sequence number, time,
level, caller) and the text ring (``text_data_ring.data``), whose blocks start
with the id of the descriptor that owns them. Records are read from the
oldest descriptor (``tail_id``) to the newest (``head_id``); one whose state
is not committed or finalized (being written, or being reused) is skipped, as
the kernel's own readers do. Three bulk reads fetch all of it.
"""

from __future__ import annotations

import struct

from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.btf import UnknownMember, UnknownType
from kpeek.kernel.logrecord import LogRecord
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.program import Kernel

DESC_FLAGS_SHIFT = 62
DESC_ID_MASK = (1 << DESC_FLAGS_SHIFT) - 1
DESC_COMMITTED, DESC_FINALIZED = 1, 2
MAX_DESCS = 1 << 22
MAX_TEXT = 1 << 28


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class _Layout:
    """Offsets of the ring buffer's fields, from BTF."""

    def __init__(self, kernel: Kernel) -> None:
        desc = kernel.type("struct prb_desc").resolve()
        info = kernel.type("struct printk_info").resolve()
        self.desc_size, self.info_size = desc.size, info.size
        self.state = desc.offsetof("state_var")
        self.begin = desc.offsetof("text_blk_lpos.begin")
        self.next = desc.offsetof("text_blk_lpos.next")
        self.seq = info.offsetof("seq")
        self.ts = info.offsetof("ts_nsec")
        self.text_len = info.offsetof("text_len")
        self.facility = info.offsetof("facility")
        self.caller = info.offsetof("caller_id")
        bit, level = info.member("level")
        self.level_bit, self.level_bits = bit, level.bitfield_size or 3
        try:
            self.subsystem = info.offsetof("dev_info.subsystem")
            self.device = info.offsetof("dev_info.device")
        except UnknownMember:
            self.subsystem = self.device = -1


def _ring(kernel: Kernel):
    address = kernel.symbol_address("prb")
    if address is None:
        raise NotSupported(
            f"{kernel.origin}: the kernel log's ring buffer (symbol prb) is not among the "
            "known symbols (kallsyms without data symbols: a kernel without "
            "CONFIG_KALLSYMS_ALL)")
    pointer = struct.unpack("<Q", kernel.memory.read(address, 8))[0]
    return kernel.object("struct printk_ringbuffer", pointer)


def read_log(kernel: Kernel) -> list[LogRecord]:
    """Every record still in the kernel's log buffer, oldest first."""
    try:
        layout = _Layout(kernel)
    except (UnknownType, UnknownMember):
        raise NotSupported(f"{kernel.origin}: no lockless printk ring buffer in the types "
                           "(kernels before 5.10 keep the log differently)") from None
    try:
        return _read(kernel, layout)
    except MemoryReadError as e:
        raise UsageError(f"{kernel.origin}: the kernel log is not readable ({e})") from None


def _read(kernel: Kernel, layout: _Layout) -> list[LogRecord]:
    rb = _ring(kernel)
    descs = rb.member("desc_ring")
    count_bits = descs.member("count_bits").value_int()
    data_ring = rb.member("text_data_ring")
    size_bits = data_ring.member("size_bits").value_int()
    if not 0 < count_bits <= 22 or not 0 < size_bits <= 28:
        raise UsageError(f"{kernel.origin}: the log ring buffer's header is damaged "
                         f"(count_bits {count_bits}, size_bits {size_bits})")
    count, size = 1 << count_bits, 1 << size_bits
    read = kernel.memory.read
    desc_raw = read(descs.member("descs").value_int(), count * layout.desc_size)
    info_raw = read(descs.member("infos").value_int(), count * layout.info_size)
    text = read(data_ring.member("data").value_int(), size)
    head = descs.member("head_id").member("counter").value_int() & DESC_ID_MASK
    tail = descs.member("tail_id").member("counter").value_int() & DESC_ID_MASK
    records = []
    ident = tail
    for _ in range(count):
        record = _record(layout, desc_raw, info_raw, text, ident, count, size_bits)
        if record is not None:
            records.append(record)
        if ident == head:
            break
        ident = (ident + 1) & DESC_ID_MASK
    records.sort(key=lambda r: r.seq)
    return records


def _record(layout: _Layout, descs: bytes, infos: bytes, text: bytes, ident: int,
            count: int, size_bits: int) -> LogRecord | None:
    index = ident % count
    d = index * layout.desc_size
    state_var = struct.unpack_from("<Q", descs, d + layout.state)[0]
    if state_var & DESC_ID_MASK != ident:
        return None  # the slot was reused for a newer record
    if state_var >> DESC_FLAGS_SHIFT not in (DESC_COMMITTED, DESC_FINALIZED):
        return None
    begin = struct.unpack_from("<Q", descs, d + layout.begin)[0]
    end = struct.unpack_from("<Q", descs, d + layout.next)[0]
    i = index * layout.info_size
    text_len = struct.unpack_from("<H", infos, i + layout.text_len)[0]
    body = _block(text, begin, end, size_bits)[:text_len]
    level_byte = infos[i + layout.level_bit // 8]
    level = (level_byte >> (layout.level_bit % 8)) & ((1 << layout.level_bits) - 1)
    subsystem = device = ""
    if layout.subsystem >= 0:
        subsystem = _cstr(infos[i + layout.subsystem : i + layout.subsystem + 16])
        device = _cstr(infos[i + layout.device : i + layout.device + 48])
    return LogRecord(
        seq=struct.unpack_from("<Q", infos, i + layout.seq)[0],
        ts_nsec=struct.unpack_from("<Q", infos, i + layout.ts)[0],
        level=level,
        facility=infos[i + layout.facility],
        caller_id=struct.unpack_from("<I", infos, i + layout.caller)[0],
        text=body.decode("utf-8", "surrogateescape"),
        subsystem=subsystem,
        device=device,
    )


def _block(text: bytes, begin: int, end: int, size_bits: int) -> bytes:
    """The text of the block at logical positions [begin, end) (get_data() in
    kernel/printk/printk_ringbuffer.c): a block that would wrap is stored whole
    at the ring's start. Data-less records (bit 0 set) have no text."""
    if begin & 1 or end & 1:
        return b""
    size = 1 << size_bits
    if begin >> size_bits == end >> size_bits:
        start, length = begin % size, end - begin
    elif (begin + size) >> size_bits == end >> size_bits:
        start, length = 0, end % size
    else:
        return b""
    if length < 8 or start + length > size:
        return b""
    return text[start + 8 : start + length]  # after the owning descriptor's id


def format_record(record: LogRecord) -> str:
    """Lines as ``dmesg`` prints them: ``[    5.157864] text``, one per line of text."""
    secs, nsec = divmod(record.ts_nsec, 1_000_000_000)
    prefix = f"[{secs:5d}.{nsec // 1000:06d}] "
    return "\n".join(prefix + line for line in record.text.split("\n"))
