"""Live kernel memory through a BPF iterator: :class:`BpfKernelMemory`.

The ``read_memory`` program (reader.bpf.c) reads the addresses userspace
puts in its globals with bpf_probe_read_kernel, which fails cleanly (it uses
copy_from_kernel_nofault) on an unmapped or non-kernel address. One iterator
run serves up to seven 4 KiB requests; reads are page-aligned and cached per
reader instance, so walking a structure costs one run per new page.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Iterable, Sequence

from kpeek.kernel.memory import MemoryReadError
from kpeek.sources.bpf.bpfsys import BpfIterator
from kpeek.sources.bpf.loaded import bpf_iterator, exclusive

PAGE = 4096
MAX_REQS = 7  # as in reader.bpf.c
MAX_READ = 64 << 20  # refuse absurd sizes before asking the kernel
_ARGS = struct.Struct("<II" + "QII" * MAX_REQS)
_RESULT = struct.Struct("<q")

_lock = threading.Lock()


def _reader_iterator() -> BpfIterator:
    """The read_memory iterator, attached to this process's main thread only
    (so a run visits one task, not all of them; a forked child gets its own)."""
    return bpf_iterator("reader", "read_memory", tid=os.getpid())


def _run_batch(requests: Sequence[tuple[int, int]]) -> list[bytes | int]:
    """Read up to MAX_REQS (address, size ≤ PAGE) ranges in one iterator run.

    Returns the bytes of each, or a positive errno where the kernel refused.
    """
    flat: list[int] = [len(requests), 0]
    for addr, size in requests:
        flat += [addr, size, 0]
    flat += [0, 0, 0] * (MAX_REQS - len(requests))
    with _lock, exclusive("reader") as obj:  # the globals may be shared (kept.py)
        it = _reader_iterator()
        obj.set_globals(_ARGS.pack(*flat))
        out = it.run()
    results: list[bytes | int] = []
    off = 0
    for _addr, size in requests:
        if off + 8 > len(out):
            results.append(errno.EIO)
            continue
        (err,) = _RESULT.unpack_from(out, off)
        off += 8
        if err:
            results.append(-err if err < 0 else errno.EIO)
        else:
            results.append(out[off : off + size])
            off += size
    return results


def _check(address: int, size: int) -> None:
    if size < 0 or address < 0 or address + size > 1 << 64:
        raise MemoryReadError(address & ((1 << 64) - 1), max(size, 0), "outside the address space")
    if size > MAX_READ:
        raise MemoryReadError(address, size, f"larger than {MAX_READ >> 20} MiB")


def _reason(err: int) -> str:
    return f"unreadable ({errno.errorcode.get(err, str(err))})"


class BpfKernelMemory:
    """The live kernel's memory, read with bpf_probe_read_kernel.

    ``read(address, size)`` returns exactly ``size`` bytes or raises
    MemoryReadError (bad address, user-space address, unmapped page). Pages
    read are cached for the life of the instance when ``cache`` is true (the
    default): make a new instance for a new moment. Creating one loads the
    BPF program and raises NotPermitted/NotSupported when that is impossible.
    """

    def __init__(self, cache: bool = True, max_cached_pages: int = 16384) -> None:
        self._cache_enabled = cache
        self._max_cached = max_cached_pages
        self._pages: dict[int, bytes | int] = {}
        with _lock:
            _reader_iterator()

    def clear_cache(self) -> None:
        """Forget every cached page (the kernel has moved on)."""
        self._pages.clear()

    def _fetch_pages(self, pages: Iterable[int]) -> None:
        missing = sorted({p for p in pages if p not in self._pages})
        if len(self._pages) + len(missing) > self._max_cached:
            self._pages.clear()
        for i in range(0, len(missing), MAX_REQS):
            batch = missing[i : i + MAX_REQS]
            for page, result in zip(batch, _run_batch([(p, PAGE) for p in batch]), strict=True):
                self._pages[page] = result

    def _read_exact(self, address: int, size: int) -> bytes:
        """Uncached read of exactly the asked range, in page-bounded pieces."""
        pieces: list[tuple[int, int]] = []
        addr, end = address, address + size
        while addr < end:
            n = min(end, (addr // PAGE + 1) * PAGE) - addr
            pieces.append((addr, n))
            addr += n
        out = bytearray()
        for i in range(0, len(pieces), MAX_REQS):
            for (a, n), r in zip(
                pieces[i : i + MAX_REQS], _run_batch(pieces[i : i + MAX_REQS]), strict=True
            ):
                if isinstance(r, int):
                    raise MemoryReadError(a, n, _reason(r))
                out += r
        return bytes(out)

    def _from_cache(self, address: int, size: int) -> bytes | None:
        first, last = address // PAGE, (address + size - 1) // PAGE
        parts = []
        for p in range(first, last + 1):
            data = self._pages.get(p * PAGE)
            if not isinstance(data, bytes):
                return None
            parts.append(data)
        joined = b"".join(parts)
        start = address - first * PAGE
        return joined[start : start + size]

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address``; MemoryReadError if unreadable."""
        _check(address, size)
        if size == 0:
            return b""
        if not self._cache_enabled:
            return self._read_exact(address, size)
        first, last = address // PAGE, (address + size - 1) // PAGE
        self._fetch_pages(p * PAGE for p in range(first, last + 1))
        data = self._from_cache(address, size)
        # A page that failed as a whole: retry the exact range, which names
        # the first unreadable byte range (and succeeds if the page read
        # failed only outside it).
        return data if data is not None else self._read_exact(address, size)

    def read_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes | MemoryReadError]:
        """Read many (address, size) ranges with as few iterator runs as possible.

        Returns, in order, the bytes of each range or the MemoryReadError it
        would have raised; never raises for a bad address.
        """
        results: list[bytes | MemoryReadError] = []
        if self._cache_enabled:
            wanted: list[int] = []
            for address, size in requests:
                try:
                    _check(address, size)
                except MemoryReadError:
                    continue
                if size:
                    wanted += [
                        p * PAGE for p in range(address // PAGE, (address + size - 1) // PAGE + 1)
                    ]
            self._fetch_pages(wanted)
        for address, size in requests:
            try:
                results.append(self.read(address, size))
            except MemoryReadError as e:
                results.append(e)
        return results

    def read_u64(self, address: int) -> int:
        """The little-endian 64-bit word at ``address``."""
        return int.from_bytes(self.read(address, 8), "little")
