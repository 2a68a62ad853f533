"""Typed values over kernel memory: struct members, pointers, arrays, enums.

An :class:`Object` is a BTF type at an address in some :class:`KernelMemory`
(live BPF reader, or synthetic memory in tests). Reading is lazy and batched:
the first value asked of an object (or of any member reached from it) reads
the whole outermost object in one call, and its members are sliced from
that buffer. Following a pointer starts a new object (and a new read).

    task = Object(btf.lookup("struct task_struct"), addr, memory)
    task.member("comm").value()            # 'bash'
    task.member("real_parent").deref().member("pid").value()
    container_of(node_addr, "struct task_struct", "sibling", memory, btf)
"""

from __future__ import annotations

import struct

from kpeek.errors import UsageError
from kpeek.kernel.btf import INT_BOOL, INT_CHAR, Btf, Kind, Type, UnknownMember
from kpeek.kernel.memory import KernelMemory, MemoryReadError
from kpeek.textsafe import decode

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

# A root object larger than this is not read whole; members read their own bytes.
_WHOLE_READ_LIMIT = 64 << 10


class ObjectError(UsageError):
    """A typed access that makes no sense (deref of a non-pointer, void, ...)."""


class Object:
    """A value of BTF type ``type`` at ``address`` in ``memory``.

    ``bit_offset``/``bit_size`` describe a bitfield (bits counted from
    ``address``). Members, elements and dereferences return new Objects.
    """

    __slots__ = ("_buf", "_root", "address", "bit_offset", "bit_size", "memory", "type")

    def __init__(
        self,
        type: Type,
        address: int,
        memory: KernelMemory,
        *,
        bit_offset: int = 0,
        bit_size: int = 0,
        _root: Object | None = None,
    ) -> None:
        self.type = type
        self.address = address
        self.memory = memory
        self.bit_offset = bit_offset
        self.bit_size = bit_size
        self._root = _root
        self._buf: bytes | None = None

    def __repr__(self) -> str:
        return f"Object({self.type.c_name!r}, 0x{self.address:x})"

    @property
    def btf(self) -> Btf:
        return self.type.btf

    @property
    def size(self) -> int:
        return self.type.size

    # -- reading ------------------------------------------------------------
    def read_bytes(self, size: int | None = None) -> bytes:
        """The raw bytes of this object (``size`` overrides the type's size).

        Served from the outermost object's buffer when that was (or can be)
        read in one go. Raises MemoryReadError for unreadable memory.
        """
        n = self.type.size if size is None else size
        root = self._root
        if root is not None and root._ensure_buffer():
            start = self.address - root.address
            buf = root._buf
            assert buf is not None
            if start >= 0 and start + n <= len(buf):
                return buf[start : start + n]
        if root is None and self._ensure_buffer():
            assert self._buf is not None
            if n <= len(self._buf):
                return self._buf[:n]
        return self.memory.read(self.address, n)

    def _ensure_buffer(self) -> bool:
        if self._buf is not None:
            return True
        try:
            size = self.type.size
        except TypeError:
            return False
        if size > _WHOLE_READ_LIMIT or size == 0:
            return False
        try:
            self._buf = self.memory.read(self.address, size)
        except MemoryReadError:
            # The whole object is not readable; members may still be (and
            # if not, their own read raises with their own address).
            return False
        return True

    def prefetch(self) -> Object:
        """Read the whole object now (one read); returns self."""
        self.read_bytes()
        return self

    # -- navigation ---------------------------------------------------------
    def member(self, path: str) -> Object:
        """The member at ``path`` ("pid", "signal.rlim[7].rlim_cur", "se.avg"), also
        through pointers as in C ("mm->mmap_base", "files->fdt->max_fds": each
        ``->`` reads the pointer). Anonymous structs and unions are searched.
        Raises UnknownMember.
        """
        if "->" in path:
            first, _, rest = path.partition("->")
            return self.member(first).deref().member(rest)
        base = self.type.resolve()
        if base.kind not in (Kind.STRUCT, Kind.UNION) and not path.startswith("["):
            raise UnknownMember(f"{self.type.c_name} is not a struct or union")
        bit, m = base.member(path)
        bit += self.bit_offset
        mtype = self.btf.type(m.type_id)
        return Object(
            mtype,
            self.address + bit // 8,
            self.memory,
            bit_offset=bit % 8 if m.bitfield_size else 0,
            bit_size=m.bitfield_size,
            _root=self._root or self,
        )

    def __getitem__(self, index: int) -> Object:
        """Element ``index`` of an array, or of what a pointer points to."""
        t = self.type.resolve()
        if t.kind == Kind.ARRAY:
            elem_id, _, n = t.array_info
            if n and not 0 <= index < n:  # n == 0: a flexible array, any index
                raise ObjectError(f"index {index} out of range for {self.type.c_name}")
            elem = self.btf.type(elem_id)
            return Object(elem, self.address + index * elem.size, self.memory,
                          _root=self._root or self)
        if t.kind == Kind.PTR:
            target = t.target
            if target.resolve().kind == Kind.VOID:
                raise ObjectError("cannot index a void pointer")
            return Object(target, self.value_int() + index * target.size, self.memory)
        raise ObjectError(f"{self.type.c_name} is neither an array nor a pointer")

    def deref(self) -> Object:
        """The object this pointer points to (no read happens until a value is asked)."""
        t = self.type.resolve()
        if t.kind != Kind.PTR:
            raise ObjectError(f"{self.type.c_name} is not a pointer")
        target = t.target
        if target.resolve().kind in (Kind.VOID, Kind.FUNC_PROTO):
            raise ObjectError(f"cannot dereference {self.type.c_name}")
        addr = self.value_int()
        if addr == 0:
            raise ObjectError(f"NULL pointer ({self.type.c_name})")
        return Object(target, addr, self.memory)

    def address_of(self) -> int:
        """``&object``: its address (not meaningful for a bitfield)."""
        if self.bit_size:
            raise ObjectError("cannot take the address of a bitfield")
        return self.address

    # -- values -------------------------------------------------------------
    def value_int(self) -> int:
        """The value as an integer (ints, bools, enums, pointers, bitfields)."""
        t = self.type.resolve()
        k = t.kind
        if k not in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.PTR):
            raise ObjectError(f"{self.type.c_name} is not an integer or pointer")
        signed = t.is_signed
        if self.bit_size:
            nbytes = (self.bit_offset + self.bit_size + 7) // 8
            raw = int.from_bytes(self.read_bytes(nbytes), "little")
            v = (raw >> self.bit_offset) & ((1 << self.bit_size) - 1)
            if signed and v >> (self.bit_size - 1):
                v -= 1 << self.bit_size
            return v
        return int.from_bytes(self.read_bytes(), "little", signed=signed)

    def __int__(self) -> int:
        return self.value_int()

    def __bool__(self) -> bool:
        return True  # an Object is a handle, not its value; use value() to test

    def value(self) -> Any:
        """The value as plain Python.

        ints and bitfields -> int, _Bool -> bool, enums -> enumerator name
        (int when no name matches), pointers -> int, floats -> float, char
        arrays -> str (up to the first NUL, invalid UTF-8 kept as surrogate
        escapes), other arrays -> list, structs/unions -> dict (members of
        anonymous structs/unions merged in). Raises MemoryReadError.
        """
        t = self.type.resolve()
        k = t.kind
        if k == Kind.INT:
            v = self.value_int()
            return bool(v) if t.int_info[0] & INT_BOOL else v
        if k in (Kind.ENUM, Kind.ENUM64):
            v = self.value_int()
            name = t.enum_name(v)
            return v if name is None else name
        if k == Kind.PTR:
            return self.value_int()
        if k == Kind.FLOAT:
            fmt = {4: "<f", 8: "<d"}.get(t.size)
            if fmt is None:
                return self.read_bytes().hex()
            return struct.unpack(fmt, self.read_bytes())[0]
        if k == Kind.ARRAY:
            elem_id, _, n = t.array_info
            if is_text_element(self.btf.type(elem_id)):
                raw = self.read_bytes()
                return decode(raw.split(b"\0", 1)[0])
            return [self[i].value() for i in range(n)]
        if k in (Kind.STRUCT, Kind.UNION):
            if self._root is None:
                self._ensure_buffer()
            out: dict[str, Any] = {}
            for m in t.members:
                child = self._child(m)
                if not m.name and child.type.resolve().kind in (Kind.STRUCT, Kind.UNION):
                    v = child.value()
                    out.update(v)
                else:
                    out[m.name] = child.value()
            return out
        raise ObjectError(f"{self.type.c_name} has no value")

    def _child(self, m: Any) -> Object:
        bit = self.bit_offset + m.bit_offset
        return Object(
            self.btf.type(m.type_id),
            self.address + bit // 8,
            self.memory,
            bit_offset=bit % 8 if m.bitfield_size else 0,
            bit_size=m.bitfield_size,
            _root=self._root or self,
        )

    def members(self) -> list[tuple[str, Object]]:
        """(name, Object) for each direct member of a struct/union ("" for anonymous)."""
        t = self.type.resolve()
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise ObjectError(f"{self.type.c_name} is not a struct or union")
        return [(m.name, self._child(m)) for m in t.members]


def is_char(t: Type) -> bool:
    """True for char, signed char and unsigned char (a resolved INT of size 1)."""
    t = t.resolve()
    return t.kind == Kind.INT and t.size == 1 and (
        bool(t.int_info[0] & INT_CHAR) or t.name in ("char", "signed char", "unsigned char")
    )


def is_text_element(t: Type) -> bool:
    """True when an array of ``t`` holds text: a char type written as such
    (``char comm[16]``), not through a typedef such as u8 or __u8 (bytes)."""
    for _ in range(16):
        if t.kind in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPE_TAG):
            t = t.target
        else:
            break
    return t.kind == Kind.INT and is_char(t)


def as_type(btf: Btf, type_or_name: Type | str) -> Type:
    """A Type from a Type or a name such as "struct task_struct" (raises UnknownType)."""
    return type_or_name if isinstance(type_or_name, Type) else btf.lookup(type_or_name)


def container_of(
    ptr: Object | int,
    type_or_name: Type | str,
    member: str,
    memory: KernelMemory | None = None,
    btf: Btf | None = None,
) -> Object:
    """The ``type`` object that contains, at member path ``member``, the address ``ptr``.

    ``ptr`` may be an address or an Object (a pointer's value, or for a
    non-pointer object its address); memory and btf then default to its own.
    Raises UnknownType / UnknownMember.
    """
    if isinstance(ptr, Object):
        memory = memory or ptr.memory
        btf = btf or ptr.btf
        address = ptr.value_int() if ptr.type.resolve().kind == Kind.PTR else ptr.address
    else:
        address = ptr
    if memory is None or btf is None:
        raise ObjectError("container_of of a plain address needs memory and btf")
    t = as_type(btf, type_or_name)
    return Object(t, address - t.resolve().offsetof(member), memory)
