"""SLUB from memory: which cache holds an address, and is that object free.

An address in the direct map has a ``struct page`` in the vmemmap array
(``vmemmap_base + pfn * sizeof(struct page)``); the head page of a slab is a
``struct slab`` (5.17+; the same bytes as ``struct page`` before) whose
``slab_cache`` names the cache. An object is free when it is on the slab's own
``freelist`` or, for a CPU's active slab, on that CPU's ``cpu_slab->freelist``.
With CONFIG_SLAB_FREELIST_HARDENED (``kmem_cache.random`` exists) each stored
free pointer is ``ptr ^ random ^ swab(address it is stored at)``.
"""

from __future__ import annotations

from dataclasses import field

from kpeek.errors import NotSupported
from kpeek.kernel.btf import UnknownMember, UnknownType
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.objects import Object
from kpeek.kernel.program import Kernel
from kpeek.records import record

PAGE_SHIFT = 12  # x86-64
OO_SHIFT = 16  # kmem_cache_order_objects: order above, objects below
_MASK = (1 << 64) - 1


def swab64(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "little"), "big")


@record
class Cache:
    """One slab cache (``struct kmem_cache``)."""

    name: str
    address: int
    object_size: int
    size: int  # the slot: object plus metadata and padding
    objects_per_slab: int
    order: int
    total_objects: int | None = None
    active_objects: int | None = None
    slabs: int | None = None


@record
class Where:
    """What an address is: a slab object (``cache`` set) or some other page."""

    address: int
    page: int | None = None  # its struct page
    pfn: int | None = None
    cache: Cache | None = None
    slab: int | None = None  # the struct slab (head page)
    object: int | None = None  # the object's start
    index: int | None = None
    free: bool | None = None
    free_on: str = ""  # which freelist: "slab", "cpu N"
    page_flags: list[str] = field(default_factory=list)
    page_type: str = ""  # buddy (a free page), table, offline, ... when the page has one
    page_refcount: int | None = None
    note: str = ""

    @property
    def offset(self) -> int | None:
        return None if self.object is None else self.address - self.object


class Slub:
    """SLUB's state in one kernel. Raises NotSupported when the kernel lacks
    what it needs (symbols with data, SLUB types)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        need = ("page_offset_base", "vmemmap_base", "slab_caches", "__per_cpu_offset")
        missing = [n for n in need if kernel.symbol_address(n) is None]
        if missing:
            raise NotSupported(f"{kernel.origin} lacks the symbols {', '.join(missing)} "
                               "(kallsyms without data symbols): kmem works on a dump of a "
                               "kernel with KALLSYMS_ALL")
        self.page_offset = self._u64("page_offset_base")
        self.vmemmap = self._u64("vmemmap_base")
        self.page_type = kernel.type("struct page")
        self.page_size = self.page_type.size
        try:
            self.slab_type = kernel.type("struct slab")
        except UnknownType:  # before 5.17 the slab fields live in struct page
            self.slab_type = self.page_type
        cache_type = kernel.type("struct kmem_cache").resolve()
        self.hardened = any(m.name == "random" for m in cache_type.members)
        self._caches: dict[int, Object] | None = None
        self.cpus = self._cpus()

    def _u64(self, name: str) -> int:
        address = self.kernel.symbol_address(name)
        assert address is not None
        return int.from_bytes(self.kernel.memory.read(address, 8), "little")

    def _cpus(self) -> list[int]:
        count = 1
        address = self.kernel.symbol_address("nr_cpu_ids")
        if address is not None:
            count = int.from_bytes(self.kernel.memory.read(address, 4), "little")
        return list(range(min(max(count, 1), 8192)))

    # -- caches ------------------------------------------------------------
    def cache_objects(self) -> dict[int, Object]:
        """address -> struct kmem_cache, for each cache on ``slab_caches``."""
        if self._caches is None:
            k = self.kernel
            walk = k.list_entries(k.symbol_address("slab_caches"), "struct kmem_cache", "list")
            t = k.type("struct kmem_cache")  # looked up once: a name lookup is not free
            self._caches = {a: k.object(t, a) for a in walk.entries}
        return self._caches

    def cache(self, s: Object, *, counts: bool = False) -> Cache:
        oo = s.member("oo.x").value_int()
        c = Cache(name=_string(self.kernel, s.member("name").value_int()), address=s.address,
                  object_size=s.member("object_size").value_int(),
                  size=s.member("size").value_int(),
                  objects_per_slab=oo & ((1 << OO_SHIFT) - 1), order=oo >> OO_SHIFT)
        if counts:
            self._count(s, c)
        return c

    def caches(self, *, counts: bool = True) -> list[Cache]:
        return [self.cache(s, counts=counts) for s in self.cache_objects().values()]

    def _nodes(self, s: Object) -> list[Object]:
        count = 1
        address = self.kernel.symbol_address("nr_node_ids")
        if address is not None:
            count = int.from_bytes(self.kernel.memory.read(address, 4), "little")
        nodes = s.member("node")
        out = []
        for i in range(min(count, 1024)):
            ptr = nodes[i].value_int()
            if ptr:
                out.append(nodes[i].deref())
        return out

    def _count(self, s: Object, c: Cache) -> None:
        """Totals as /proc/slabinfo counts them: every object of every slab, less
        the free ones on the nodes' partial lists (CPU slabs count as in use)."""
        total = slabs = free = 0
        try:
            for node in self._nodes(s):
                total += node.member("total_objects.counter").value_int()
                slabs += node.member("nr_slabs.counter").value_int()
                walk = self.kernel.list_entries(node.member("partial"), self.slab_type,
                                                "slab_list")
                for address in walk.entries:
                    slab = self.kernel.object(self.slab_type, address)
                    free += slab.member("objects").value_int() - slab.member("inuse").value_int()
        except (UnknownMember, MemoryReadError):
            return  # without CONFIG_SLUB_DEBUG the kernel keeps no totals
        c.total_objects, c.slabs, c.active_objects = total, slabs, total - free

    # -- addresses ---------------------------------------------------------
    def where(self, address: int) -> Where:
        """What ``address`` is: a slab object (and whether free), or another page."""
        w = Where(address)
        if not self.page_offset <= address < self.vmemmap:
            w.note = "not in the kernel's direct map (kernel image, vmalloc or module space?)"
            return w
        w.pfn = (address - self.page_offset) >> PAGE_SHIFT
        max_pfn = self.kernel.symbol_address("max_pfn")
        if max_pfn is not None and w.pfn >= self._u64("max_pfn"):
            w.note = "beyond the end of physical memory (vmalloc or module space?)"
            return w
        w.page = self.vmemmap + w.pfn * self.page_size
        page = self.kernel.object(self.page_type, w.page)
        try:
            head = self._head(page)
            head_page = self.kernel.object(self.page_type, head)
            w.page_flags = self._flags(head_page)
            w.page_type = self._type_of(head_page)
            w.page_refcount = head_page.member("_refcount.counter").value_int()
        except MemoryReadError as e:
            w.note = f"its struct page cannot be read: {e}"
            return w
        slab = self.kernel.object(self.slab_type, head)
        cache_address = slab.member("slab_cache").value_int()
        s = self.cache_objects().get(cache_address)
        if s is None:
            w.note = "not a slab page" + (
                ": a free page (in the buddy allocator)" if w.page_type == "buddy" else
                ": free (refcount 0)" if w.page_refcount == 0 else "")
            return w
        w.slab = head
        w.cache = self.cache(s)
        self._locate(w, s, slab)
        return w

    def _head(self, page: Object) -> int:
        """The head page of a compound page (``compound_head`` has bit 0 set on tails)."""
        compound = page.member("compound_head").value_int()
        return compound - 1 if compound & 1 else page.address

    def _flags(self, page: Object) -> list[str]:
        try:
            enum = self.kernel.type("enum pageflags").resolve()
        except UnknownType:
            return []
        flags = page.member("flags").value_int()
        names: dict[int, str] = {}
        limit = 64
        for e in enum.enumerators:
            if e.name == "__NR_PAGEFLAGS":
                limit = e.value
            else:
                names.setdefault(e.value, e.name.removeprefix("PG_"))
        return [names[b] for b in sorted(names) if b < limit and flags >> b & 1]

    def _type_of(self, page: Object) -> str:
        """The page's type: 6.10+ keeps it in the top byte (enum pagetype); before,
        a bit cleared under PAGE_TYPE_BASE marks it (PG_buddy, PG_table, ...)."""
        try:
            raw = page.member("page_type").value_int() & 0xFFFF_FFFF
        except UnknownMember:
            return ""
        try:
            kinds = self.kernel.type("enum pagetype").resolve().enumerators
        except UnknownType:
            if raw >> 28 != 0xF:
                return ""
            old = {0x80: "buddy", 0x100: "offline", 0x200: "table", 0x400: "guard"}
            return ",".join(n for bit, n in old.items() if not raw & bit)
        for e in kinds:
            if e.name.startswith("PGTY_") and raw >> 24 == e.value:
                return e.name.removeprefix("PGTY_")
        return ""

    def _locate(self, w: Where, s: Object, slab: Object) -> None:
        assert w.slab is not None and w.cache is not None
        base = self.page_offset + (((w.slab - self.vmemmap) // self.page_size) << PAGE_SHIFT)
        size = w.cache.size
        left = _member_or(s, "red_left_pad", 0)
        w.index = (w.address - base) // size
        objects = slab.member("objects").value_int()
        if w.index >= objects:
            w.note = f"past the last of the slab's {objects} objects (unused tail)"
            w.index = None
            return
        w.object = base + w.index * size + left
        if w.address < w.object:
            w.note = "in the object's left red zone"
        free_ptr_at = s.member("offset").value_int()
        random = s.member("random").value_int() if self.hardened else 0
        lo, hi = base, base + objects * size
        seen = self._chain(slab.member("freelist").value_int(), free_ptr_at, random, lo, hi)
        if w.object in seen:
            w.free, w.free_on = True, "slab"
            return
        for cpu, c in self._cpu_slabs(s):
            if c.member("slab" if _has(c, "slab") else "page").value_int() != w.slab:
                continue
            if w.object in self._chain(c.member("freelist").value_int(), free_ptr_at, random,
                                       lo, hi):
                w.free, w.free_on = True, f"CPU {cpu}"
                return
        w.free = False

    def _cpu_slabs(self, s: Object) -> list[tuple[int, Object]]:
        k = self.kernel
        per_cpu = s.member("cpu_slab").value_int()
        offsets = k.symbol_address("__per_cpu_offset")
        assert offsets is not None
        raw = k.memory.read(offsets, 8 * len(self.cpus))
        out = []
        t = k.type("struct kmem_cache_cpu")
        for cpu in self.cpus:
            off = int.from_bytes(raw[8 * cpu : 8 * cpu + 8], "little")
            out.append((cpu, k.object(t, (per_cpu + off) & _MASK)))
        return out

    def _chain(self, first: int, free_ptr_at: int, random: int, lo: int, hi: int) -> set[int]:
        """The objects on one freelist, bounded by the slab's span."""
        seen: set[int] = set()
        obj = first
        while obj and lo <= obj < hi and obj not in seen and len(seen) < (hi - lo):
            seen.add(obj)
            at = obj + free_ptr_at
            stored = int.from_bytes(self.kernel.memory.read(at, 8), "little")
            obj = stored ^ random ^ swab64(at) if self.hardened else stored
        return seen


def _has(obj: Object, name: str) -> bool:
    try:
        obj.member(name)
    except UnknownMember:
        return False
    return True


def _member_or(obj: Object, name: str, default: int) -> int:
    return obj.member(name).value_int() if _has(obj, name) else default


def _string(kernel: Kernel, address: int, limit: int = 64) -> str:
    if not address:
        return "?"
    for size in (limit, 16):
        try:
            raw = kernel.memory.read(address, size)
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        except MemoryReadError:
            continue
    return "?"
