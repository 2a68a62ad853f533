"""Kernel symbols from /proc/kallsyms: address <-> name, read once.

Symbols are kept in arrays sorted by address and searched with bisect.
kallsyms gives no sizes; a symbol's size is the distance to the next
higher symbol address, as the kernel's own kallsyms_lookup computes it.

Where several symbols share an address, the address is named by the first
of them in the kernel's own order, the order /proc/kallsyms lists them in:
the core kernel's lookup (get_symbol_pos in kernel/kallsyms.c) steps back
to the lowest table index with that address, and a module's
(find_kallsyms_symbol) keeps the first symtab entry with it. That is the
name oopses and /proc/PID/stack print: ``__do_sys_pause``, not its alias
``__x64_sys_pause``; ``__pfx_f`` where padding starts a section marker.
On these machines kallsyms lists functions (and a few section markers),
not data symbols.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
import re

from kpeek.errors import NotPermitted, NotSupported
from kpeek.records import record

KALLSYMS = "/proc/kallsyms"
# A line whose address is not all zeros (none when the kernel hides them).
_NONZERO_ADDRESS = re.compile(r"^0*[1-9a-f]", re.M)
# "ffffffff81000000 T _text" or "... t name\t[module]"
_LINE = re.compile(r"^([0-9a-fA-F]+) (\S) (\S+)(?:\s+\[(\S+)\])?[ \t]*$", re.M)


@record(frozen=True, slots=True)
class Symbol:
    """One kernel symbol. ``size`` is 0 when unknown (the last symbol)."""

    name: str
    address: int
    size: int
    module: str | None = None
    kind: str = "t"  # the nm-style type letter from kallsyms (t, T, d, ...)

    @property
    def is_function(self) -> bool:
        return self.kind in "tTwW"


def _names_an_address(name: str) -> bool:
    """Whether the kernel may name an address by this symbol: not an unnamed
    one nor an assembler mapping symbol ($x, .L..., L0), which the module
    lookup skips (kernel/module/kallsyms.c)."""
    return bool(name) and not name.startswith(("$", ".L", "L0"))


def _linker_provided(name: str) -> bool:
    """A section marker a linker script provides (``__start_x``, ``__x_end`` ...)."""
    if len(name) < 8 or not name.startswith("__"):
        return False
    return name.startswith(("__start_", "__stop_", "__end_")) or name.endswith(("_start", "_end"))


def kallsyms_tie_order(name: str, weak: bool) -> tuple[bool, bool, int, str]:
    """Where a symbol goes among those at its address in the kernel's table, as
    scripts/kallsyms sorts them when the kernel is built: strong before weak,
    others before linker-provided markers, fewer leading underscores first,
    then the order ``nm -n`` gave them (by name). For symbols read from a
    vmlinux's .symtab, whose order is not the table's."""
    return weak, _linker_provided(name), len(name) - len(name.lstrip("_")), name


class Kallsyms:
    """All kernel symbols, searchable by address and by name.

    Build with :meth:`load` (reads /proc/kallsyms) or :meth:`from_text`.
    """

    def __init__(
        self,
        addresses: list[int],
        kinds: list[str],
        names: list[str],
        modules: list[str | None] | None = None,
    ) -> None:
        # Parallel lists in the kernel's order (within one address, the order
        # it picks a name in); several names may share one address.
        n = len(addresses)
        mods = modules if modules is not None else [None] * n
        order: range | list[int] = range(n)
        if not all(map(operator.le, addresses, itertools.islice(addresses, 1, None))):
            order = sorted(order, key=addresses.__getitem__)  # stable: ties keep their order
        self._names_raw = (addresses, kinds, names, mods)
        self._by_name_cache: dict[str, int] | None = None
        self._name_lookups = 0
        # The first index at each address names it: a dict filled in reverse
        # order keeps each address's first index as its value (C speed; a
        # Python loop over 120,000 symbols cost 50 ms of every start-up).
        backwards = order[::-1]
        first = dict(zip(map(addresses.__getitem__, backwards), backwards, strict=True))
        self._addrs: list[int] = list(first)[::-1]
        self._picks: list[int] = list(first.values())[::-1]
        # Names the kernel's lookup skips are rare (arm modules' "$x"): one
        # search of all names joined finds whether there are any.
        joined = "\n" + "\n".join(names) + "\n"
        if any(mark in joined for mark in ("\n\n", "\n$", "\n.L", "\nL0")):
            self._skip_unnamed()
        self._ends: list[int] = []  # where a section ends: no symbol reaches past one

    def _skip_unnamed(self) -> None:
        """Where the first symbol at an address is one the kernel's lookup skips
        (an unnamed or mapping symbol: module symtabs have them), the next one
        names it."""
        addresses, _, names, _ = self._names_raw
        bad = [k for k, pick in enumerate(self._picks) if not _names_an_address(names[pick])]
        wanted = {self._addrs[k] for k in bad}
        by_address: dict[int, list[int]] = {}
        for i in sorted(range(len(addresses)), key=addresses.__getitem__):
            if addresses[i] in wanted and _names_an_address(names[i]):
                by_address.setdefault(addresses[i], []).append(i)
        for k in bad:
            better = by_address.get(self._addrs[k])
            if better:
                self._picks[k] = better[0]

    _NAME_SCANS = 8  # lookups by name answered by list scans before a dict pays off

    def _index_of(self, name: str) -> int | None:
        """Raw index of ``name``; a global name wins over a static one of that name."""
        if self._by_name_cache is None and self._name_lookups < self._NAME_SCANS:
            # One name (kpeek sym NAME): list.index scans at C speed; the dict
            # of 120,000 names cost 60 ms.
            self._name_lookups += 1
            _, kinds, names, _ = self._names_raw
            found: int | None = None
            at = -1
            while True:
                try:
                    at = names.index(name, at + 1)
                except ValueError:
                    return found
                if found is None:
                    found = at
                if kinds[at].isupper():
                    return at
        return self._by_name.get(name)

    @property
    def _by_name(self) -> dict[str, int]:
        """name -> raw index; a global name wins over a static one of that name."""
        if self._by_name_cache is None:
            _, kinds, names, _ = self._names_raw
            index: dict[str, int] = {}
            for i, name in enumerate(names):
                old = index.get(name)
                if old is None or (kinds[old].islower() and kinds[i].isupper()):
                    index[name] = i
            self._by_name_cache = index
        return self._by_name_cache

    @classmethod
    def load(cls, path: str = KALLSYMS) -> Kallsyms:
        """Read /proc/kallsyms once.

        Raises NotPermitted when the kernel hides addresses (they read as
        zero for unprivileged users) and NotSupported when the file is missing.
        """
        return cls.lazy_from_text(_read_text(path), source=path)

    @classmethod
    def lazy_from_text(cls, text: str, source: str = KALLSYMS) -> Kallsyms:
        """Like :meth:`from_text`, the table built when first needed: a lookup
        by name (kpeek sym NAME) is answered from the text (80 ms less)."""
        if text and not _NONZERO_ADDRESS.search(text):
            cls.from_text(text, source=source)  # raises, saying what hides them
        out = cls.__new__(cls)
        out._text, out._source = text, source
        return out

    @classmethod
    def load_indexed(cls) -> Kallsyms:
        """/proc/kallsyms for lookups by name (kpeek sym NAME): a name of the
        kernel image's is answered from this boot's index (symindex.py)
        without reading the table; anything else reads it, as :meth:`load`
        (and, where there was no index, makes one for the next process)."""
        from kpeek.kernel.symindex import SymbolIndex

        out = cls.__new__(cls)
        out._deferred, out._source = KALLSYMS, KALLSYMS
        out._index = SymbolIndex.open()
        return out

    def _unparsed(self) -> str | None:
        """The text not yet parsed into the table (read now if deferred), or None."""
        d = self.__dict__
        if "_deferred" in d:
            text = Kallsyms.load(d.pop("_deferred"))._text
            d["_text"] = text
            if d.get("_index") is None:
                from kpeek.kernel import symindex

                symindex.save(text)
        return d.get("_text")

    # Attributes of the table, built from _text on first access.
    _TABLE = frozenset(("_names_raw", "_by_name_cache", "_name_lookups", "_addrs", "_picks",
                        "_ends"))

    def __getattr__(self, attr: str):
        if attr in Kallsyms._TABLE and self._unparsed() is not None:
            text = self.__dict__.pop("_text")
            self.__dict__.update(Kallsyms.from_text(text, source=self._source).__dict__)
            return getattr(self, attr)
        raise AttributeError(attr)

    def _image_symbol(self, name: str) -> Symbol | None:
        """``name``'s symbol from the index or the unparsed text (see
        _from_text_by_name), or None to say "ask the table"."""
        index = self.__dict__.get("_index")
        if index is not None:
            found = index.find(name)
            if found is not None:
                address, kind, size = found
                return Symbol(name, address, size, None, kind)
        return self._from_text_by_name(name) if self._unparsed() is not None else None

    def _from_text_by_name(self, name: str) -> Symbol | None:
        """``name``'s symbol straight from the unparsed text of the kernel image's
        lines (sorted by address), or None to say "build the table": a name of
        a module's, or the image's last symbol. The same answer as the table's:
        a global name before a static one, the size up to the next address."""
        text = self.__dict__["_text"]
        end = text.find("[")
        end = len(text) if end < 0 else text.rfind("\n", 0, end) + 1
        needle = f" {name}\n"
        found = None
        at = text.find(needle, 0, end)
        while at >= 0:  # lines "ADDRESS T NAME"
            head = text[text.rfind("\n", 0, at) + 1:at].split(" ")
            if len(head) == 2 and len(head[1]) == 1 and head[0]:
                if found is None or (found[2].islower() and head[1].isupper()):
                    found = (at + len(needle) - 1, head[0], head[1])
                if found[2].isupper():
                    break
            at = text.find(needle, at + 1, end)
        if found is None:
            return None
        at, address = found[0], int(found[1], 16)
        while at + 1 < end:  # the next line with a higher address gives the size
            word = text[at + 1:at + 1 + len(found[1])]
            if int(word, 16) > address:
                return Symbol(name, address, int(word, 16) - address, None, found[2])
            at = text.find("\n", at + 1, end)
            if at < 0:
                break
        return None

    @classmethod
    def from_text(cls, text: str, source: str = KALLSYMS) -> Kallsyms:
        modules: list[str | None] | None = None
        # Module (and BPF program, ftrace) symbols carry a fourth column, and
        # come after the kernel image's: split the lines from the first of them.
        cut = text.find("[")
        cut = len(text) if cut < 0 else text.rfind("\n", 0, cut) + 1
        lines = text[cut:].splitlines()
        tagged = _LINE.findall("\n".join(line for line in lines if "[" in line))
        # the fast path: three words per line, split all at once
        words = text[:cut].split()
        words += " ".join(line for line in lines if "[" not in line).split()
        if len(words) % 3:
            raise NotSupported(f"{source}: unexpected format")
        addrs = [int(a, 16) for a in words[0::3]]
        kinds = words[1::3]
        names = words[2::3]
        if tagged:
            modules = [None] * len(addrs)
            addrs += [int(r[0], 16) for r in tagged]
            kinds += [r[1] for r in tagged]
            names += [r[2] for r in tagged]
            modules += [r[3] or None for r in tagged]
        if addrs and not any(addrs):
            fix = (
                "lower the kernel.kptr_restrict sysctl (it hides them even from root)"
                if os.geteuid() == 0
                else "run kpeek as root"
            )
            raise NotPermitted(f"kernel symbol addresses are hidden ({source} shows zeros): {fix}")
        return cls(addrs, kinds, names, modules)

    def extended(self, extra: list[tuple[int, str, str, str | None]],
                 ends: list[int] | None = None) -> Kallsyms:
        """These symbols plus ``extra`` (address, type letter, name, module) ones,
        given in each module's symtab order;
        ``ends`` are addresses where text ends (a module's), which cap the size
        of the symbol before them as the kernel's own lookup does."""
        addresses, kinds, names, modules = (list(x) for x in self._names_raw)
        # By address only: within one address the module's symtab order stays,
        # which is the order its lookup picks a name in.
        extra = sorted(extra, key=lambda e: e[0])
        base = len(addresses)
        for address, kind, name, module in extra:
            addresses.append(address)
            kinds.append(kind)
            names.append(name)
            modules.append(module)
        if extra and self._addrs and extra[0][0] > self._addrs[-1]:
            # modules live above the kernel image: keep this index, index only the new
            tail = Kallsyms(addresses[base:], kinds[base:], names[base:], modules[base:])
            out = Kallsyms.__new__(Kallsyms)
            out._by_name_cache = None
            out._name_lookups = 0
            out._names_raw = (addresses, kinds, names, modules)
            out._addrs = self._addrs + tail._addrs
            out._picks = self._picks + [base + i for i in tail._picks]
        else:
            out = Kallsyms(addresses, kinds, names, modules)
        out._ends = sorted({*self._ends, *(ends or [])})
        return out

    @property
    def has_module_symbols(self) -> bool:
        return any(m is not None for m in self._names_raw[3])

    def all(self) -> list[Symbol]:
        """Every symbol, in address order (each name at an address)."""
        out = []
        addresses = self._names_raw[0]
        for raw in sorted(range(len(addresses)), key=addresses.__getitem__):
            i = bisect.bisect_left(self._addrs, addresses[raw])
            out.append(self._symbol(raw, i))
        return out

    def __len__(self) -> int:
        return len(self._names_raw[0])

    def _symbol(self, raw: int, index: int) -> Symbol:
        addresses, kinds, names, modules = self._names_raw
        addr = addresses[raw]
        size = self._addrs[index + 1] - addr if index + 1 < len(self._addrs) else 0
        if self._ends:
            at = bisect.bisect_right(self._ends, addr)
            if at < len(self._ends) and (not size or self._ends[at] - addr < size):
                size = self._ends[at] - addr
        return Symbol(names[raw], addr, size, modules[raw], kinds[raw])

    def lookup(self, address: int) -> Symbol | None:
        """The symbol containing ``address`` (start <= address < start+size), or None."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        sym = self._symbol(self._picks[i], i)
        if address == sym.address or address < sym.address + sym.size:
            return sym
        return None

    def address_of(self, name: str) -> int | None:
        """Address of the symbol called ``name``, or None."""
        sym = self._image_symbol(name)
        if sym is not None:
            return sym.address
        raw = self._index_of(name)
        return None if raw is None else self._names_raw[0][raw]

    def symbol(self, name: str) -> Symbol | None:
        """The full :class:`Symbol` for ``name`` (size included), or None."""
        sym = self._image_symbol(name)
        if sym is not None:
            return sym
        raw = self._index_of(name)
        if raw is None:
            return None
        i = bisect.bisect_left(self._addrs, self._names_raw[0][raw])
        return self._symbol(raw, i)

    def format(self, address: int) -> str:
        """``"name+0xoff/0xsize"`` as the kernel prints it, or hex when unknown."""
        sym = self.lookup(address)
        if sym is None:
            return f"0x{address:x}"
        text = f"{sym.name}+0x{address - sym.address:x}/0x{sym.size:x}"
        if sym.module:
            text += f" [{sym.module}]"
        return text

    def symbolize(self, address: int) -> str | None:
        """``format(address)`` when it falls in a symbol, else None."""
        return self.format(address) if self.lookup(address) else None

    @property
    def text_range(self) -> tuple[int, int]:
        """(lowest, highest) symbol address."""
        if not self._addrs:
            return (0, 0)
        return self._addrs[0], self._addrs[-1]


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except FileNotFoundError:
        raise NotSupported(f"{path} is missing: the kernel lacks CONFIG_KALLSYMS") from None
    except PermissionError:
        raise NotPermitted(f"cannot read {path}: run kpeek as root") from None


_loaded: Kallsyms | None = None


def load_kallsyms() -> Kallsyms:
    """/proc/kallsyms parsed once per process (see :meth:`Kallsyms.load`)."""
    global _loaded
    if _loaded is None:
        _loaded = Kallsyms.load()
    return _loaded
