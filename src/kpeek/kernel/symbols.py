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
import os
import re
from dataclasses import dataclass

from kpeek.errors import NotPermitted, NotSupported

KALLSYMS = "/proc/kallsyms"
# "ffffffff81000000 T _text" or "... t name\t[module]"
_LINE = re.compile(r"^([0-9a-fA-F]+) (\S) (\S+)(?:\s+\[(\S+)\])?[ \t]*$", re.M)


@dataclass(frozen=True, slots=True)
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
        order = range(n)
        if any(addresses[i] > addresses[i + 1] for i in range(n - 1)):
            order = sorted(order, key=addresses.__getitem__)
        self._names_raw = (addresses, kinds, names, mods)
        self._by_name_cache: dict[str, int] | None = None
        addrs: list[int] = []
        picks: list[int] = []  # index into the raw lists of each address's chosen name
        last = -1
        for i in order:  # a stable sort: ties keep the kernel's order
            a = addresses[i]
            if a == last:
                # The first listed names the address, unless it is one the
                # kernel skips (an unnamed or mapping symbol).
                if not _names_an_address(names[picks[-1]]) and _names_an_address(names[i]):
                    picks[-1] = i
                continue
            last = a
            addrs.append(a)
            picks.append(i)
        self._addrs = addrs
        self._picks = picks
        self._ends: list[int] = []  # where a section ends: no symbol reaches past one

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
        try:
            with open(path, "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            raise NotSupported(f"{path} is missing: the kernel lacks CONFIG_KALLSYMS") from None
        except PermissionError:
            raise NotPermitted(f"cannot read {path}: run kpeek as root") from None
        return cls.from_text(text, source=path)

    @classmethod
    def from_text(cls, text: str, source: str = KALLSYMS) -> Kallsyms:
        modules: list[str | None] | None = None
        if "[" in text:  # module (and BPF program) symbols carry a fourth column
            lines = text.splitlines()
            plain = [line for line in lines if "[" not in line]
            tagged = _LINE.findall("\n".join(line for line in lines if "[" in line))
        else:
            plain, tagged = None, []
        # the fast path: three words per line, split all at once
        words = text.split() if plain is None else " ".join(plain).split()
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
        raw = self._by_name.get(name)
        return None if raw is None else self._names_raw[0][raw]

    def symbol(self, name: str) -> Symbol | None:
        """The full :class:`Symbol` for ``name`` (size included), or None."""
        raw = self._by_name.get(name)
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


_loaded: Kallsyms | None = None


def load_kallsyms() -> Kallsyms:
    """/proc/kallsyms parsed once per process (see :meth:`Kallsyms.load`)."""
    global _loaded
    if _loaded is None:
        _loaded = Kallsyms.load()
    return _loaded
