"""BTF (BPF Type Format) parser: the kernel's own description of its types.

``/sys/kernel/btf/vmlinux`` describes every struct, union, enum, typedef and
function of the running kernel. This module reads it in pure Python:

- one pass over the type section, read as 32-bit words, records where each
  type starts (cheap integers only; no per-type objects): ~20 ms for the
  5.5 MB vmlinux BTF of 126,000 types;
- names are found by searching the string table and then the type section
  for the name's offset (a dict of every name is built only after many
  lookups);
- :class:`Type` views are made on demand and cached, members and enum
  values are decoded only when someone asks for them.

Nothing is cached on disk: the pass costs less than hashing the file to
check a cache did, so a first run is as fast as any other.

All BTF kinds are understood: INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD,
TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT,
DECL_TAG, TYPE_TAG and ENUM64, including ``kind_flag`` bitfield members.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
import time
from array import array
from collections import namedtuple
from enum import IntEnum
from functools import cached_property

from kpeek.errors import NotSupported, UsageError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F


class Kind(IntEnum):
    VOID = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


_KINDS = tuple(Kind)  # Kind by number, without the cost of Kind(n)

# Bytes that follow the 12-byte common header: (fixed extra, per-vlen item).
_EXTRA: dict[int, tuple[int, int]] = {
    Kind.INT: (4, 0),
    Kind.PTR: (0, 0),
    Kind.ARRAY: (12, 0),
    Kind.STRUCT: (0, 12),
    Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8),
    Kind.FWD: (0, 0),
    Kind.TYPEDEF: (0, 0),
    Kind.VOLATILE: (0, 0),
    Kind.CONST: (0, 0),
    Kind.RESTRICT: (0, 0),
    Kind.FUNC: (0, 0),
    Kind.FUNC_PROTO: (0, 8),
    Kind.VAR: (4, 0),
    Kind.DATASEC: (0, 12),
    Kind.FLOAT: (0, 0),
    Kind.DECL_TAG: (4, 0),
    Kind.TYPE_TAG: (0, 0),
    Kind.ENUM64: (0, 12),
}

# Per kind, the words a type record takes: a fixed count, and more per vlen
# item (None for numbers that are no kind: the walk stops there).
_STEP: list[int | None] = [None] * 32
_PER_ITEM = [0] * 32
for _k, (_fixed, _per) in _EXTRA.items():
    _STEP[_k], _PER_ITEM[_k] = 3 + _fixed // 4, _per // 4
# Kinds indexed by name (struct/union/enum namespace, typedefs, functions, ...).
_INDEXED = [False] * 32
for _k in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD, Kind.TYPEDEF,
           Kind.FUNC, Kind.VAR, Kind.DATASEC, Kind.FLOAT):
    _INDEXED[_k] = True

# Kinds whose third header word is a size (the others hold a type id).
_SIZED = frozenset(
    {Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.DATASEC, Kind.FLOAT}
)
# Kinds that are transparent wrappers around another type.
_QUALIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
# Kinds indexed by name for lookup (struct/union/enum namespace and typedefs, ...).
_TAG_PREFIX = {Kind.STRUCT: "struct", Kind.UNION: "union", Kind.ENUM: "enum", Kind.ENUM64: "enum"}

INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


class BtfError(NotSupported):
    """The BTF data is missing or malformed (exit 3)."""


class UnknownType(UsageError):
    """No type of that name in the kernel's BTF (exit 2)."""


class UnknownMember(UsageError):
    """The type has no member of that name (exit 2)."""


# Small immutable records. Named tuples, not dataclasses: importing
# dataclasses (and inspect with it) cost more than parsing a struct.
class Member(namedtuple("Member", "name type_id bit_offset bitfield_size")):
    """One member of a struct or union.

    ``bit_offset`` counts from the start of the containing type;
    ``bitfield_size`` is 0 for an ordinary (non-bitfield) member.
    """

    __slots__ = ()
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int

    @property
    def offset(self) -> int:
        """Byte offset of the member (of the byte holding its first bit)."""
        return self.bit_offset // 8


class EnumValue(namedtuple("EnumValue", "name value")):
    __slots__ = ()
    name: str
    value: int


class Param(namedtuple("Param", "name type_id")):
    __slots__ = ()
    name: str
    type_id: int


class VarSecInfo(namedtuple("VarSecInfo", "type_id offset size")):
    __slots__ = ()
    type_id: int
    offset: int
    size: int


class Type:
    """A view of one BTF type: kind, name, size and kind-specific details.

    Views are cheap and made on demand by :meth:`Btf.type`; details such as
    members are decoded the first time they are asked for.
    """

    __slots__ = ("__dict__", "_off", "_word3", "btf", "id", "kind", "kind_flag", "name", "vlen")

    def __init__(self, btf: Btf, type_id: int) -> None:
        self.btf = btf
        self.id = type_id
        if type_id == 0:
            self.kind, self.kind_flag, self.name, self.vlen, self._word3, self._off = (
                Kind.VOID, False, "void", 0, 0, -1)
            return
        off = btf._offsets[type_id - btf._start]
        name_off, info, word3 = btf._hdr.unpack_from(btf._types, off)
        self._off = off + 12
        self.kind = _KINDS[(info >> 24) & 0x1F]
        self.kind_flag = bool(info >> 31)
        self.vlen = info & 0xFFFF
        self.name = btf.string(name_off)
        self._word3 = word3

    def __repr__(self) -> str:
        return f"<btf.Type #{self.id} {self.kind.name} {self.c_name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Type) and other.btf is self.btf and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- basic properties ----------------------------------------------------
    @property
    def type_id(self) -> int:
        """The referenced type (pointer target, typedef target, func proto, ...)."""
        if self.kind in _SIZED:
            raise TypeError(f"{self.kind.name} has no referenced type")
        if self.kind == Kind.ARRAY:
            return self.array_info[0]
        return self._word3

    @property
    def target(self) -> Type:
        return self.btf.type(self.type_id)

    @cached_property
    def size(self) -> int:
        """Size in bytes of a value of this type (raises TypeError for void/func)."""
        k = self.kind
        if k in _SIZED:
            return self._word3
        if k == Kind.PTR:
            return self.btf.pointer_size
        if k == Kind.ARRAY:
            elem, _, n = self.array_info
            return self.btf.type(elem).size * n
        if k in _QUALIFIERS or k == Kind.TYPEDEF or k == Kind.VAR:
            return self.target.size
        raise TypeError(f"{self.c_name!r} ({k.name}) has no size")

    @property
    def is_complete(self) -> bool:
        return self.kind not in (Kind.FWD, Kind.VOID, Kind.FUNC, Kind.FUNC_PROTO)

    def resolve(self) -> Type:
        """This type with typedefs and const/volatile/restrict/type tags stripped."""
        t = self
        for _ in range(64):  # bounded: a malformed loop must not hang us
            if t.kind in _QUALIFIERS or t.kind == Kind.TYPEDEF:
                t = t.target
            else:
                return t
        raise BtfError(f"typedef chain too long at BTF type {self.id}")

    # -- kind-specific details ----------------------------------------------
    @cached_property
    def int_info(self) -> tuple[int, int, int]:
        """(encoding flags INT_SIGNED|INT_CHAR|INT_BOOL, bit offset, bits) of an INT."""
        if self.kind != Kind.INT:
            raise TypeError("not an INT")
        (v,) = self.btf._u32.unpack_from(self.btf._types, self._off)
        return (v >> 24) & 0x0F, (v >> 16) & 0xFF, v & 0xFF

    @property
    def is_signed(self) -> bool:
        if self.kind == Kind.INT:
            return bool(self.int_info[0] & INT_SIGNED)
        if self.kind in (Kind.ENUM, Kind.ENUM64):
            return self.kind_flag
        return False

    @cached_property
    def array_info(self) -> tuple[int, int, int]:
        """(element type id, index type id, number of elements) of an ARRAY."""
        if self.kind != Kind.ARRAY:
            raise TypeError("not an ARRAY")
        return self.btf._arr.unpack_from(self.btf._types, self._off)

    @cached_property
    def members(self) -> tuple[Member, ...]:
        """Members of a STRUCT or UNION, in declaration order (anonymous ones named "")."""
        if self.kind not in (Kind.STRUCT, Kind.UNION):
            raise TypeError(f"{self.c_name!r} is not a struct or union")
        btf, out = self.btf, []
        for name_off, tid, off in btf._arr.iter_unpack(
            btf._types[self._off : self._off + 12 * self.vlen]
        ):
            if self.kind_flag:
                out.append(Member(btf.string(name_off), tid, off & 0xFFFFFF, off >> 24))
            else:
                out.append(Member(btf.string(name_off), tid, off, 0))
        return tuple(out)

    @cached_property
    def enumerators(self) -> tuple[EnumValue, ...]:
        """Values of an ENUM or ENUM64 (signed when the enum's kind_flag says so)."""
        btf, out = self.btf, []
        data = btf._types[self._off : self._off + (8 if self.kind == Kind.ENUM else 12) * self.vlen]
        if self.kind == Kind.ENUM:
            fmt = btf._enum_s if self.kind_flag else btf._enum_u
            for name_off, val in fmt.iter_unpack(data):
                out.append(EnumValue(btf.string(name_off), val))
        elif self.kind == Kind.ENUM64:
            for name_off, lo, hi in btf._arr.iter_unpack(data):
                val = (hi << 32) | lo
                if self.kind_flag and val >= 1 << 63:
                    val -= 1 << 64
                out.append(EnumValue(btf.string(name_off), val))
        else:
            raise TypeError("not an enum")
        return tuple(out)

    def enum_name(self, value: int) -> str | None:
        """The enumerator name for ``value``, or None."""
        for e in self.enumerators:
            if e.value == value:
                return e.name
        return None

    @cached_property
    def params(self) -> tuple[Param, ...]:
        """Parameters of a FUNC_PROTO (a trailing ("", 0) means varargs)."""
        if self.kind != Kind.FUNC_PROTO:
            raise TypeError("not a FUNC_PROTO")
        btf = self.btf
        return tuple(
            Param(btf.string(n), t)
            for n, t in btf._pair.iter_unpack(btf._types[self._off : self._off + 8 * self.vlen])
        )

    @property
    def linkage(self) -> int:
        """Linkage of a FUNC (vlen) or VAR (0 static, 1 global, 2 extern)."""
        if self.kind == Kind.FUNC:
            return self.vlen
        if self.kind == Kind.VAR:
            return self.btf._u32.unpack_from(self.btf._types, self._off)[0]
        raise TypeError("not a FUNC or VAR")

    @cached_property
    def section_vars(self) -> tuple[VarSecInfo, ...]:
        """Variables in a DATASEC: (VAR type id, offset, size)."""
        if self.kind != Kind.DATASEC:
            raise TypeError("not a DATASEC")
        btf = self.btf
        return tuple(
            VarSecInfo(*v)
            for v in btf._arr.iter_unpack(btf._types[self._off : self._off + 12 * self.vlen])
        )

    @property
    def component_idx(self) -> int:
        """DECL_TAG: -1 for the whole declaration, else member/param index."""
        if self.kind != Kind.DECL_TAG:
            raise TypeError("not a DECL_TAG")
        return struct.unpack_from(self.btf._endian + "i", self.btf._types, self._off)[0]

    # -- members by path ----------------------------------------------------
    def member(self, path: str) -> tuple[int, Member]:
        if "->" in path:  # through a pointer: the offset is then in the pointee
            first, _, rest = path.partition("->")
            _, m = self.member(first)
            ptr = self.btf.type(m.type_id).resolve()
            if ptr.kind != Kind.PTR:
                raise UnknownMember(f"{first} is not a pointer: use '.', not '->'")
            return ptr.target.resolve().member(rest)
        return self._member(path)

    def _member(self, path: str) -> tuple[int, Member]:
        """Find a member by dotted path, looking inside anonymous structs/unions.

        Returns (bit offset from the start of this type, the Member). Array
        indexes are allowed (``"a.b[2].c"``). Raises UnknownMember.
        """
        t = self.resolve()
        bit_offset = 0
        found: Member | None = None
        for part in _split_path(path):
            if isinstance(part, int):
                if t.kind != Kind.ARRAY:
                    raise UnknownMember(f"{t.c_name} is not an array; cannot index [{part}]")
                elem, _, n = t.array_info
                if not 0 <= part < max(n, 1):
                    raise UnknownMember(f"index [{part}] out of range for {t.c_name}")
                et = self.btf.type(elem)
                bit_offset += part * et.size * 8
                found = Member(f"[{part}]", elem, bit_offset, 0)
                t = et.resolve()
                continue
            if t.kind not in (Kind.STRUCT, Kind.UNION):
                raise UnknownMember(f"{t.c_name} has no member {part!r} (not a struct or union)")
            hit = t._find_direct(part)
            if hit is None:
                raise UnknownMember(f"{t.c_name} has no member {part!r}")
            off, found = hit
            bit_offset += off
            t = self.btf.type(found.type_id).resolve()
        if found is None:
            raise UnknownMember("empty member path")
        return bit_offset, Member(found.name, found.type_id, bit_offset, found.bitfield_size)

    def _find_direct(self, name: str, depth: int = 0) -> tuple[int, Member] | None:
        for m in self.members:
            if m.name == name:
                return m.bit_offset, m
        if depth > 16:
            return None
        for m in self.members:
            if not m.name:
                inner = self.btf.type(m.type_id).resolve()
                if inner.kind in (Kind.STRUCT, Kind.UNION):
                    hit = inner._find_direct(name, depth + 1)
                    if hit is not None:
                        return m.bit_offset + hit[0], hit[1]
        return None

    def offsetof(self, path: str) -> int:
        """Byte offset of a member path (raises UnknownMember; bitfields are rejected)."""
        bit, m = self.member(path)
        if m.bitfield_size or bit % 8:
            raise UnknownMember(f"{path} is a bitfield; it has no byte offset")
        return bit // 8

    # -- C-style names -------------------------------------------------------
    @property
    def c_name(self) -> str:
        """The type as C would write it: "struct list_head *", "char [16]", ..."""
        return self.btf.declaration(self.id, "")

    def declaration(self, name: str) -> str:
        """A C declaration of ``name`` with this type: "char comm[16]"."""
        return self.btf.declaration(self.id, name)


def _split_path(path: str) -> list[str | int]:
    """"a.b[2].c" -> ["a", "b", 2, "c"]; raises UnknownMember on bad syntax."""
    out: list[str | int] = []
    for chunk in path.replace("->", ".").split("."):
        name, _, rest = chunk.partition("[")
        if name:
            if not name.replace("_", "a").isalnum():
                raise UnknownMember(f"bad member name {name!r} in {path!r}")
            out.append(name)
        elif not rest:
            raise UnknownMember(f"bad member path {path!r}")
        while rest:
            idx, sep, rest = rest.partition("]")
            if not sep:
                raise UnknownMember(f"unclosed [ in {path!r}")
            try:
                out.append(int(idx, 0))
            except ValueError:
                raise UnknownMember(f"bad index [{idx}] in {path!r}") from None
            if rest:
                if not rest.startswith("["):
                    raise UnknownMember(f"bad member path {path!r}")
                rest = rest[1:]
    return out


class _NameIndex:
    """Type ids by name, without a dict of every name (building one cost more
    than the rest of a cold ``kpeek struct``): a name's string offsets are
    found in the string table, then the words of the type section that hold
    one of them and are followed by an indexed kind, by a byte search; each
    such word that starts a type record is a type of that name. Past a few
    lookups a dict pays off and is built once.
    """

    _SCANS = 32
    # A scan costs from microseconds to a few ms (a short name ending many
    # other strings); once the scans together cost what building the dict
    # does (tens of ms for vmlinux), build it.
    _SCAN_BUDGET_S = 0.03

    def __init__(self, btf: Btf) -> None:
        self._btf = btf
        self._dict: dict[str, list[int]] | None = None
        self._lookups = 0
        self._scan_s = 0.0

    def get(self, name: str, default: tuple[()] = ()) -> list[int] | tuple[()]:
        if self._dict is None:
            self._lookups += 1
            if self._lookups > self._SCANS or self._scan_s > self._SCAN_BUDGET_S:
                self._dict = self._build()
        if self._dict is not None:
            return self._dict.get(name, default)
        started = time.perf_counter()
        found = self._scan(name)
        self._scan_s += time.perf_counter() - started
        return found or default

    def _string_offsets(self, name: str) -> list[int]:
        btf = self._btf
        # A name may start inside another string (a shared tail): every
        # place the name ends at a NUL is a possible name offset.
        key = name.encode("utf-8", "surrogateescape") + b"\0"
        found = []
        tables = [(btf._strings, btf._base_strlen)]
        if btf._base is not None:  # a split BTF's names may sit in its base's strings
            tables.append((btf._base._strings, 0))
        for strings, shift in tables:
            at = strings.find(key)
            while at >= 0:
                found.append(at + shift)
                at = strings.find(key, at + 1)
        return found

    def _scan(self, name: str) -> list[int]:
        btf = self._btf
        data, words, start = btf.data, btf._words, btf._start
        lo, hi = btf._types_at, btf._types_at + len(btf._types)
        order = "little" if btf._endian == "<" else "big"
        ids = []
        for off in self._string_offsets(name):
            needle = off.to_bytes(4, order)  # as the section holds it
            at = data.find(needle, lo, hi)
            while at >= 0:
                w = (at - lo) >> 2
                if (at - lo) & 3 == 0 and w + 1 < len(words) and _INDEXED[
                        (words[w + 1] >> 24) & 0x1F]:
                    i = _record_at(btf, w << 2)  # a member's or enumerator's word is none
                    if i is not None:
                        ids.append(start + i)
                at = data.find(needle, at + 1, hi)
        return sorted(ids)

    def _build(self) -> dict[str, list[int]]:
        btf = self._btf
        words, start = btf._words, btf._start
        by_off: dict[int, list[int]] = {}
        for i, off in enumerate(btf._offsets):
            w = off >> 2
            if i and words[w] and _INDEXED[(words[w + 1] >> 24) & 0x1F]:
                by_off.setdefault(words[w], []).append(start + i)
        names: dict[str, list[int]] = {}
        for off, ids in by_off.items():
            names.setdefault(btf.string(off), []).extend(ids)
        for ids in names.values():
            ids.sort()
        return names


class _LazyOffsets:
    """A Btf's type offsets (see Btf._index), walked only as far as asked.

    The types a kernel's headers declare first (list_head, task_struct,
    file, inode...) are among the first thousand of ~130,000, and walking
    them all cost more than the rest of a cold ``kpeek struct``. Once the
    walk is whole, the Btf holds the plain array instead of this.
    """

    _CHUNK = 1 << 14  # words walked at a time past what was asked

    def __init__(self, btf: Btf) -> None:
        self._btf = btf
        self._offs = array("I", [0])  # type id 0 is void
        self._pos = 0  # the next word to walk

    def _extend(self, stop: int) -> None:
        """Walk up to word ``stop``; the whole section makes it the Btf's array."""
        btf = self._btf
        self._pos = btf._walk(self._offs, self._pos, stop)
        if self._pos >= len(btf._words):
            btf._offsets = self._offs

    def whole(self) -> array:
        if self._pos < len(self._btf._words):
            self._extend(len(self._btf._words))
        return self._offs

    def has(self, index: int) -> bool:
        while index >= len(self._offs) and self._pos < len(self._btf._words):
            self._extend(self._pos + self._CHUNK)
        return index < len(self._offs)

    def __getitem__(self, index: int) -> int:
        if index >= len(self._offs) and not self.has(index):
            raise IndexError(index)
        return self._offs[index]

    def __len__(self) -> int:
        return len(self.whole())

    def __iter__(self):
        return iter(self.whole())

    def first_named(self, name_offs: set[int], kind: int) -> int | None:
        """Index of the first type of ``kind`` whose name is at one of
        ``name_offs``, the walk going no further than that type."""
        words = self._btf._words
        done = 1  # indexes checked so far (0 is void)
        while True:
            offs = self._offs
            for i in range(done, len(offs)):
                w = offs[i] >> 2
                if words[w] in name_offs and (words[w + 1] >> 24) & 0x1F == kind:
                    return i
            done = len(offs)
            if self._pos >= len(words):
                return None
            self._extend(self._pos + self._CHUNK)

    def record_at(self, byte_off: int) -> int | None:
        """The index of the type that starts at ``byte_off`` in the section, or None."""
        if byte_off >= (self._pos << 2):
            self._extend((byte_off >> 2) + 1)
        return _index_of(self._offs, byte_off)


def _index_of(offsets: array, byte_off: int) -> int | None:
    i = bisect.bisect_left(offsets, byte_off, 1)  # 1: void's 0 is no record
    return i if i < len(offsets) and offsets[i] == byte_off else None


def _record_at(btf: Btf, byte_off: int) -> int | None:
    """Index of the type record starting at ``byte_off`` of ``btf``'s type section."""
    offsets = btf._offsets
    if isinstance(offsets, _LazyOffsets):
        return offsets.record_at(byte_off)
    return _index_of(offsets, byte_off)


def _has_index(offsets: array | _LazyOffsets, index: int) -> bool:
    if isinstance(offsets, _LazyOffsets):
        return offsets.has(index)
    return index < len(offsets)


class Btf:
    """Parsed BTF: types by id and by name.

    Build with :func:`load_vmlinux_btf` (cached) or :meth:`Btf.from_bytes`.
    A module's split BTF (/sys/kernel/btf/<module>) is parsed with ``base``
    set to vmlinux's: its type ids and string offsets continue the base's.
    """

    def __init__(
        self,
        data: bytes,
        *,
        base: Btf | None = None,
        lazy: bool = False,
    ) -> None:
        """``lazy``: walk the type section only as far as the types asked for
        (a cold ``kpeek struct`` needs the first thousand of ~130,000 types);
        a malformed section is then found when reached, not here."""
        self._base = base
        # local index i holds type id i + _start (index 0 is void / unused)
        self._start = len(base) - 1 if base is not None else 0
        self._base_strlen = len(base._strings) if base is not None else 0
        if len(data) < 24:
            raise BtfError("BTF data too short")
        if struct.unpack_from("<H", data, 0)[0] == BTF_MAGIC:
            self._endian = "<"
        elif struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
            self._endian = ">"
        else:
            raise BtfError("not BTF data (bad magic)")
        e = self._endian
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            e + "HBBIIIII", data, 0
        )
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        if hdr_len + max(type_off + type_len, str_off + str_len) > len(data):
            raise BtfError("BTF sections extend past the end of the data")
        self.data = data
        self._types_at = hdr_len + type_off
        self._types = memoryview(data)[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._hdr = struct.Struct(e + "III")
        self._arr = self._hdr
        self._u32 = struct.Struct(e + "I")
        self._pair = struct.Struct(e + "II")
        self._enum_u = self._pair
        self._enum_s = struct.Struct(e + "Ii")
        self.pointer_size = 8
        self._cache: dict[int, Type] = {}
        self._decl_cache: dict[int, str] = {}
        self._words = self._as_words(self._types, e)
        self._offsets: array | _LazyOffsets = _LazyOffsets(self) if lazy else self._index()
        self._names = _NameIndex(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        return cls(bytes(data))

    # -- parsing ---------------------------------------------------------------
    @staticmethod
    def _as_words(types: memoryview, endian: str) -> memoryview | array:
        """The type section as 32-bit words in this machine's byte order."""
        if len(types) % 4:
            raise BtfError("BTF type section does not end on a type boundary")
        if (endian == "<") == (sys.byteorder == "little"):
            return types.cast("I")  # no copy
        words = array("I")
        words.frombytes(types)
        words.byteswap()
        return words

    def _index(self) -> array:
        """One pass over the type section: the byte offset where each type starts."""
        offsets = array("I", [0])  # type id 0 is void
        self._walk(offsets, 0, len(self._words))
        return offsets

    def _walk(self, offsets: array, pos: int, stop: int) -> int:
        """Append the offsets of the types from word ``pos`` on, until the
        word ``stop`` (or past it, for a record that spans it); the word the
        walk ended at. Raises BtfError for a malformed section."""
        words = self._words
        total = len(words)
        stop = min(stop, total)
        step, per_item = _STEP, _PER_ITEM
        append = offsets.append
        try:
            # Every record is whole words, so the walk is in words: indexing
            # a memoryview is faster than unpacking bytes.
            while pos < stop:
                append(pos << 2)
                info = words[pos + 1]
                kind = (info >> 24) & 0x1F
                pos += step[kind] + per_item[kind] * (info & 0xFFFF)
        except IndexError:
            raise BtfError(f"truncated BTF type at offset {pos << 2}") from None
        except TypeError:  # step[kind] is None
            raise BtfError(f"unknown BTF kind {kind} at type {self._start + len(offsets) - 1}"
                           ) from None
        if pos >= total and pos != total:
            raise BtfError("BTF type section does not end on a type boundary")
        return pos

    # -- access ----------------------------------------------------------------
    def __len__(self) -> int:
        """Number of type ids, including id 0 (void) and a base's types."""
        return self._start + len(self._offsets)

    def string(self, off: int) -> str:
        if off == 0:
            return ""
        if off < self._base_strlen:
            assert self._base is not None
            return self._base.string(off)
        off -= self._base_strlen
        s = self._strings
        end = s.find(b"\0", off)
        if end < 0:
            raise BtfError(f"BTF string offset {off} out of range")
        return s[off:end].decode("utf-8", "replace")

    def type(self, type_id: int) -> Type:
        """The type with this id (0 is void). Raises BtfError for a bad id."""
        t = self._cache.get(type_id)
        if t is None:
            if self._base is not None and type_id <= self._start:
                return self._base.type(type_id)
            if type_id < 0 or not _has_index(self._offsets, type_id - self._start):
                raise BtfError(f"BTF type id {type_id} out of range")
            t = self._cache[type_id] = Type(self, type_id)
        return t

    def types(self):
        """Every type of this BTF (not its base), in id order, excluding void."""
        for i in range(self._start + 1, len(self)):
            yield self.type(i)

    def ids_named(self, name: str) -> list[int]:
        """Ids of every indexed type (struct, union, enum, typedef, func, ...) with this name."""
        return list(self._names.get(name, ()))

    def find(self, name: str, kinds: tuple[Kind, ...] | None = None) -> Type | None:
        """A type by name, or None (a split BTF looks in its base too).

        ``name`` may carry a tag: "struct task_struct", "union x", "enum pid_type";
        without one, struct, union, typedef, enum, int and float match (in that
        order of preference). A complete definition wins over a forward declaration.
        """
        hit = self._find_local(name, kinds)
        if hit is None and self._base is not None:
            hit = self._base.find(name, kinds)
        return hit

    def _find_local(self, name: str, kinds: tuple[Kind, ...] | None) -> Type | None:
        name = " ".join(name.split())
        if not name:
            return None  # anonymous types have no name to be found by
        tag, _, rest = name.partition(" ")
        if tag in ("struct", "union", "enum") and rest:
            name = rest
            kinds = {
                "struct": (Kind.STRUCT,),
                "union": (Kind.UNION,),
                "enum": (Kind.ENUM, Kind.ENUM64),
            }[tag]
            fwd_ok = tag != "enum"
        else:
            fwd_ok = False
        if kinds is None:
            kinds = (Kind.STRUCT, Kind.UNION, Kind.TYPEDEF, Kind.ENUM, Kind.ENUM64,
                     Kind.INT, Kind.FLOAT)
        offsets = self._offsets
        if isinstance(offsets, _LazyOffsets) and self._names._dict is None:
            # The first type of the preferred kind is the answer: walk to it
            # (often among the first types), not through all of them.
            first = offsets.first_named(set(self._names._string_offsets(name)), kinds[0])
            if first is not None:
                return self.type(self._start + first)
        candidates = [self.type(i) for i in self._names.get(name, ())]
        for kind in kinds:
            for t in candidates:
                if t.kind == kind:
                    return t
        if fwd_ok:
            for t in candidates:
                if t.kind == Kind.FWD and t.kind_flag == (kinds[0] == Kind.UNION):
                    return t
        return None

    def lookup(self, name: str) -> Type:
        """Like :meth:`find` but raises UnknownType; accepts pointer and array
        suffixes too: "struct file *", "char [16]"."""
        text = name.strip()
        stars = 0
        while text.endswith("*"):
            stars += 1
            text = text[:-1].rstrip()
        if stars:
            base = self.lookup(text)
            return self._synthetic_pointer(base, stars)
        t = self.find(text)
        if t is None:
            raise UnknownType(f"no type named {name!r} in the kernel's BTF")
        return t

    def _synthetic_pointer(self, base: Type, stars: int) -> Type:
        """An existing PTR type to ``base`` (pointers to most types exist in BTF)."""
        t = base
        for _ in range(stars):
            ptr = self._pointer_to(t.id)
            if ptr is None:
                raise UnknownType(f"the kernel's BTF has no type {t.c_name} *")
            t = ptr
        return t

    def _pointer_to(self, type_id: int) -> Type | None:
        index = getattr(self, "_ptr_index", None)
        if index is None:
            index = {}
            for i in range(1, len(self._offsets)):
                _, info, target = self._hdr.unpack_from(self._types, self._offsets[i])
                if (info >> 24) & 0x1F == Kind.PTR:
                    index.setdefault(target, i + self._start)
            self._ptr_index = index
        pid = index.get(type_id)
        if pid is None and self._base is not None:
            return self._base._pointer_to(type_id)
        return None if pid is None else self.type(pid)

    # -- C declarations ----------------------------------------------------------
    def declaration(self, type_id: int, name: str = "") -> str:
        """C declaration of ``name`` (may be "") with type ``type_id``."""
        out = self._decl(type_id, name, 0)
        return out.rstrip()

    def _decl(self, tid: int, inner: str, depth: int) -> str:
        if depth > 32:
            return "?" + (" " + inner if inner else "")
        t = self.type(tid)
        k = t.kind
        if k == Kind.PTR:
            target = t.target
            # skip type tags for display, but keep the pointee's shape
            while target.kind == Kind.TYPE_TAG:
                target = target.target
            if target.kind in (Kind.ARRAY, Kind.FUNC_PROTO):
                return self._decl(target.id, f"(*{inner})", depth + 1)
            return self._decl(target.id, f"*{inner}", depth + 1)
        if k in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
            word = {Kind.CONST: "const", Kind.VOLATILE: "volatile", Kind.RESTRICT: "restrict"}[k]
            base = t.target
            if base.kind in (Kind.PTR, Kind.ARRAY, Kind.FUNC_PROTO):
                return self._decl(base.id, f"{word} {inner}".rstrip() if inner else word, depth + 1)
            return f"{word} " + self._decl(base.id, inner, depth + 1)
        if k == Kind.TYPE_TAG:
            return self._decl(t.type_id, inner, depth + 1)
        if k == Kind.ARRAY:
            elem, _, n = t.array_info
            return self._decl(elem, f"{inner}[{n}]", depth + 1)
        if k == Kind.FUNC_PROTO:
            params = []
            for p in t.params:
                if p.type_id == 0 and not p.name:
                    params.append("...")
                else:
                    params.append(self._decl(p.type_id, p.name, depth + 1))
            return self._decl(t.type_id, f"{inner}({', '.join(params) or 'void'})", depth + 1)
        if k == Kind.FUNC:
            return self._decl(t.type_id, t.name, depth + 1)
        if k == Kind.VAR:
            return self._decl(t.type_id, t.name, depth + 1)
        base = self._base_name(t)
        if not inner:
            return base
        return f"{base} {inner}"

    @staticmethod
    def _base_name(t: Type) -> str:
        k = t.kind
        if k in _TAG_PREFIX:
            return f"{_TAG_PREFIX[k]} {t.name or '(anon)'}"
        if k == Kind.FWD:
            return f"{'union' if t.kind_flag else 'struct'} {t.name}"
        if k == Kind.DATASEC:
            return f"SEC({t.name})"
        if k == Kind.DECL_TAG:
            return f"__attribute__((btf_decl_tag(\"{t.name}\")))"
        return t.name or "void"


# -- loading -------------------------------------------------------------------------

_loaded: dict[str, Btf] = {}


def load_btf(path: str | os.PathLike[str], *, base: Btf | None = None) -> Btf:
    """Parse the BTF file at ``path``, once per process.

    Raises BtfError (exit 3) when the file is missing or unreadable.
    """
    key = os.fspath(path)
    btf = _loaded.get(key)
    if btf is not None and btf._base is base:
        return btf
    try:
        with open(key, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BtfError(f"{key} not found: this kernel was built without BTF "
                       "(CONFIG_DEBUG_INFO_BTF=y is needed)") from None
    except OSError as e:
        raise BtfError(f"cannot read {key}: {e.strerror}") from None
    btf = _loaded[key] = Btf(data, base=base, lazy=True)
    return btf


def load_vmlinux_btf() -> Btf:
    """The running kernel's BTF (/sys/kernel/btf/vmlinux), parsed once per process."""
    return load_btf(VMLINUX_BTF)


def load_module_btf(module: str) -> Btf:
    """A loaded module's split BTF (/sys/kernel/btf/<module>), on top of vmlinux's.

    Raises BtfError when the module has no BTF (or is not loaded).
    """
    if not module or "/" in module or module.startswith("."):
        raise UsageError(f"bad module name {module!r}")
    return load_btf(os.path.join(os.path.dirname(VMLINUX_BTF), module), base=load_vmlinux_btf())
