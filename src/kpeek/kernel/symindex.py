"""A per-boot index of the kernel image's symbols by name, kept on disk, so
that ``kpeek sym NAME`` need not have the kernel format all of
/proc/kallsyms (about 35 ms of CPU for 120,000 lines) on every run.

Only the kernel image's symbols are indexed (the lines before the first
``[module]``-tagged one): they are fixed for a boot. Module, BPF program
and ftrace trampoline symbols, which come and go, are never in it; a name
not found in the index is answered from /proc/kallsyms as before. Each line
holds what Kallsyms answers for the name from the image's lines: the first
global symbol of that name, else the first one, and its size up to the next
higher address (a name whose symbol is the image's last one is left out).

The file, ``$XDG_CACHE_HOME/kpeek/kallsyms-<key>.idx`` (else
``~/.cache/kpeek``), is made by the first kpeek sym of a boot that read the
whole table. Its key is a hash of the boot id, the kernel's release and
version, and the first 4 KiB of /proc/kallsyms as this process reads them
now (a reader to whom the kernel hides addresses sees zeros there, and
misses). It holds kernel addresses: it is written 0600 in a folder of the
user's own, atomically (a rename), and used only when it and its folder
belong to this user and nobody else may write them. No usable folder (no
HOME, read-only) means no index, never an error.

Format (ASCII): a header line ``kpeek-symindex 1 <key>``, then one line per
name, ``NAME ADDRESS KIND SIZE`` (hex), sorted by name as bytes (searched
by bisection in a memory map), then ``end <count>``.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import operator
import os

from kpeek import cachedir
from kpeek.cachedir import boot_key

KALLSYMS = "/proc/kallsyms"
MAGIC = b"kpeek-symindex 1 "
HEAD = 4096  # bytes of /proc/kallsyms in the key


def _read_head(path: str = KALLSYMS) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks, size = [], 0
        while size < HEAD:
            chunk = os.read(fd, HEAD - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class SymbolIndex:
    """This boot's index, opened with :meth:`open`."""

    def __init__(self, mm: mmap.mmap, start: int, end: int) -> None:
        self._mm, self._start, self._end = mm, start, end

    @classmethod
    def open(cls, folder: str | None = None) -> SymbolIndex | None:
        """The index of this boot, or None (none made yet, not trusted, another
        boot's or kernel's, addresses hidden from this reader, any error)."""
        key = None
        with contextlib.suppress(OSError):
            key = boot_key(_read_head())
        dir_fd = cachedir.open_dir(folder or cachedir.cache_dir()) if key else None
        if dir_fd is None:
            return None
        fd = cachedir.open_private(dir_fd, f"kallsyms-{key}.idx")
        os.close(dir_fd)
        if fd is None:
            return None
        try:
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):  # empty
            return None
        finally:
            os.close(fd)
        start = mm.find(b"\n") + 1
        trailer = mm.rfind(b"\nend ", 0, len(mm)) + 1
        if (mm[:start] != MAGIC + key.encode() + b"\n" or trailer <= 0
                or mm[len(mm) - 1:] != b"\n"):
            mm.close()  # another key's, or cut short
            return None
        return cls(mm, start, trailer)

    def find(self, name: str) -> tuple[int, str, int] | None:
        """(address, kind letter, size) of the image symbol ``name``, or None."""
        try:
            want = name.encode("ascii")
        except UnicodeEncodeError:
            return None
        if not want or b" " in want or b"\n" in want:
            return None
        mm, lo, hi = self._mm, self._start, self._end
        while lo < hi:  # lo and hi are line starts
            mid = (lo + hi) // 2
            start = mm.rfind(b"\n", lo - 1, mid) + 1
            end = mm.find(b"\n", start, hi)
            line = mm[start:end]
            key = line[: line.find(b" ")]
            if key < want:
                lo = end + 1
            elif key > want:
                hi = start
            else:
                try:
                    _, address, kind, size = line.split(b" ")
                    return int(address, 16), kind.decode("ascii"), int(size, 16)
                except ValueError:  # not a line this module wrote
                    return None
        return None

    def close(self) -> None:
        self._mm.close()


def build(text: str) -> bytes | None:
    """The index of the image part of ``text`` (/proc/kallsyms as read),
    without its header; None when the text is not as expected (then no
    index is kept)."""
    end = text.find("[")
    end = len(text) if end < 0 else text.rfind("\n", 0, end) + 1
    words = text[:end].split()
    lines = text.count("\n", 0, end) + (end > 0 and text[end - 1] != "\n")
    if len(words) != 3 * lines or not lines or not text.isascii():
        return None  # a line of another shape, a byte that is not ASCII: do not guess
    hexes, kinds, names = words[0::3], words[1::3], words[2::3]
    addresses = [int(a, 16) for a in hexes]
    if any(len(k) != 1 for k in kinds) or not all(
            itertools.starmap(operator.le, itertools.pairwise(addresses))):
        return None
    # Each name's line: the first global one when the first is static, else
    # the first (Kallsyms's pick). Dicts filled backwards keep first indexes.
    # (Whole-list operations at C speed: a loop over 120,000 names made the
    # first kpeek sym of a boot 0.4 s slower.)
    n = len(names)
    chosen = dict(zip(reversed(names), range(n - 1, -1, -1), strict=True))
    upper = [i for i, k in enumerate(kinds) if k.isupper()]
    first_upper = dict(zip([names[i] for i in reversed(upper)], reversed(upper), strict=True))
    chosen.update({name: i for name, i in first_upper.items() if kinds[chosen[name]].islower()})
    # The next higher address after each address (sorted): its symbol's end;
    # the image's last address has none here (the table knows its size).
    distinct = sorted(set(addresses))
    next_higher = dict(itertools.pairwise(distinct))  # the last has none
    last = distinct[-1]
    order = sorted(name for name, i in chosen.items() if addresses[i] != last)  # ASCII: as bytes
    picks = list(map(chosen.__getitem__, order))
    at = list(map(addresses.__getitem__, picks))
    sizes = map(format, map(operator.sub, map(next_higher.__getitem__, at), at),
                itertools.repeat("x"))
    lines = map(" ".join, zip(order, map(hexes.__getitem__, picks),
                              map(kinds.__getitem__, picks), sizes, strict=True))
    out = "\n".join(lines)
    return f"{out}\nend {len(order)}\n".encode("ascii")


def save(text: str, folder: str | None = None) -> bool:
    """Write this boot's index made from ``text`` (all of /proc/kallsyms,
    just read, addresses shown). False when not kept; never raises for a
    missing or unwritable folder."""
    folder = folder or cachedir.cache_dir()
    dir_fd = cachedir.open_dir(folder, create=True)
    if folder is None or dir_fd is None:
        return False
    try:
        if not os.access(".", os.W_OK, dir_fd=dir_fd):
            return False  # checked before the index is made: no work for nothing
        head = _read_head()
        key = boot_key(head)
        if key is None or not text.encode("ascii", "replace").startswith(head):
            return False  # the table changed (or reads otherwise) since the text was read
        body = build(text)
        if body is None:
            return False

        def write(path: str) -> bool:
            with open(path, "wb") as f:
                f.write(MAGIC + key.encode() + b"\n" + body)
            return True

        return cachedir.replace(folder, dir_fd, f"kallsyms-{key}.idx", write,
                                stale_prefix="kallsyms-")
    except (OSError, ValueError):
        return False
    finally:
        os.close(dir_fd)
