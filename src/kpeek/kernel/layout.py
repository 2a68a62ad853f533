"""Struct layouts from BTF, for walks that read many objects of one type.

A :class:`Layout` looks each member path up once and then slices integers
out of raw bytes read in one go, which is much faster than an Object per
field when thousands of task_structs or files are read. Members that only
some kernels have are asked with :meth:`Layout.has` (or ``optional=True``).
"""

from __future__ import annotations

from kpeek.kernel.btf import Btf, Kind, UnknownMember


class Layout:
    """Offsets and sizes of the members of one struct (``"struct file"``)."""

    def __init__(self, btf: Btf, name: str) -> None:
        self.btf = btf
        self.name = name
        self.type = btf.lookup(name).resolve()
        self.size = self.type.size
        self._fields: dict[str, tuple[int, int, bool] | None] = {}

    def _field(self, path: str) -> tuple[int, int, bool] | None:
        if path not in self._fields:
            try:
                bit, m = self.type.member(path)
            except UnknownMember:
                self._fields[path] = None
            else:
                t = self.btf.type(m.type_id).resolve()
                signed = t.kind == Kind.INT and t.is_signed
                self._fields[path] = (bit // 8, t.size, signed)
        return self._fields[path]

    def has(self, path: str) -> bool:
        """Whether this kernel's struct has the member path."""
        return self._field(path) is not None

    def off(self, path: str) -> int:
        """Byte offset of ``path``; raises UnknownMember when the kernel lacks it."""
        f = self._field(path)
        if f is None:
            raise UnknownMember(f"{self.name} has no member {path!r} on this kernel")
        return f[0]

    def first(self, *paths: str) -> str:
        """The first of ``paths`` this kernel has (fields renamed across versions)."""
        for p in paths:
            if self.has(p):
                return p
        raise UnknownMember(f"{self.name} has none of {', '.join(paths)} on this kernel")

    def int(self, raw: bytes, path: str, base: int = 0) -> int:
        """The integer (or pointer) member ``path`` from ``raw`` (this struct at ``base``)."""
        f = self._field(path)
        if f is None:
            raise UnknownMember(f"{self.name} has no member {path!r} on this kernel")
        off, size, signed = f
        return int.from_bytes(raw[base + off : base + off + size], "little", signed=signed)

    def bytes(self, raw: bytes, path: str) -> bytes:
        """The raw bytes of member ``path`` (a char array, say)."""
        f = self._field(path)
        if f is None:
            raise UnknownMember(f"{self.name} has no member {path!r} on this kernel")
        return raw[f[0] : f[0] + f[1]]

    def span(self, *paths: str) -> int:
        """Bytes from the struct's start to the end of the furthest of ``paths``
        that exists: read that much to have them all in one buffer."""
        ends = [f[0] + f[1] for p in paths if (f := self._field(p)) is not None]
        return max(ends, default=0)
