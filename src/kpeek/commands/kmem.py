"""kpeek kmem: slab caches, and what an address is (SLUB).

  kpeek -c vmcore kmem ffff888003a4c1c0     its cache, object, offset, free or not
  kpeek -c vmcore kmem -s                   every cache: sizes and object counts
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import UsageError
from kpeek.kernel.address import parse_address
from kpeek.kernel.modules import list_modules
from kpeek.kernel.program import Kernel
from kpeek.kernel.slab import Cache, Slub, Where
from kpeek.targets import open_kernel
from kpeek.textsafe import for_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kmem", help="slab caches, and which cache and object an address is",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", metavar="ADDR", nargs="*", help="hex address or symbol[+off]")
    p.add_argument("-s", "--slabs", action="store_true", help="list the slab caches")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.slabs and not args.address:
        raise UsageError("kmem needs an address or -s")
    kernel = open_kernel(args, "kpeek kmem")
    slub = Slub(kernel)
    if args.slabs:
        caches = slub.caches()
        if args.json:
            jsonout.emit("kmem", {"caches": [_cache_json(c) for c in caches]})
        else:
            _print_caches(caches)
        return 0
    found = [slub.where(parse_address(a, kernel.symbols)) for a in args.address]
    for w in found:
        if w.page is None:
            w.note = outside_direct_map(kernel, w.address) or w.note
    if args.json:
        jsonout.emit("kmem", {"addresses": [_where_json(w) for w in found]})
        return 0
    for w in found:
        _print_where(w)
    return 0


def outside_direct_map(kernel: Kernel, address: int) -> str | None:
    """What an address outside the direct map is: module memory or a kernel symbol."""
    for m in list_modules(kernel):
        if m.holds(address):
            part = "text" if m.in_text(address) else "data"
            return f"in module {m.name}'s {part}"
    sym = kernel.symbols.lookup(address) if kernel.symbols is not None else None
    if sym is not None and sym.size:
        return f"in the kernel image: {kernel.symbols.format(address)}"
    return None


def _cache_json(c: Cache) -> dict:
    return {"name": c.name, "address": f"0x{c.address:x}", "object_size": c.object_size,
            "slot_size": c.size, "objects_per_slab": c.objects_per_slab, "order": c.order,
            "total_objects": c.total_objects, "active_objects": c.active_objects,
            "slabs": c.slabs}


def _where_json(w: Where) -> dict:
    def hx(v: int | None) -> str | None:
        return None if v is None else f"0x{v:x}"

    return {"address": hx(w.address), "page": hx(w.page), "pfn": w.pfn,
            "cache": _cache_json(w.cache) if w.cache else None, "slab": hx(w.slab),
            "object": hx(w.object), "offset": w.offset, "index": w.index,
            "free": w.free, "free_on": w.free_on or None,
            "page_flags": w.page_flags, "page_type": w.page_type or None,
            "page_refcount": w.page_refcount, "note": w.note or None}


def _print_caches(caches: list[Cache]) -> None:
    out = sys.stdout
    out.write(f"{'CACHE':<16} {'NAME':<28} {'OBJSIZE':>7} {'SLOT':>6} {'PER SLAB':>8} "
              f"{'ACTIVE':>9} {'TOTAL':>7} {'SLABS':>6}\n")
    for c in caches:
        def n(v: int | None) -> str:
            return "-" if v is None else str(v)

        out.write(f"{c.address:016x} {for_terminal(c.name):<28} {c.object_size:>7} "
                  f"{c.size:>6} {c.objects_per_slab:>8} {n(c.active_objects):>9} "
                  f"{n(c.total_objects):>7} {n(c.slabs):>6}\n")


def _print_where(w: Where) -> None:
    out = sys.stdout
    out.write(f"address 0x{w.address:x}\n")
    if w.page is not None:
        flags = ",".join(w.page_flags) or "none"
        kind = f"  type {w.page_type}" if w.page_type else ""
        out.write(f"  page    0x{w.page:x}  pfn 0x{w.pfn:x}  flags {flags}{kind}  "
                  f"refcount {w.page_refcount}\n")
    if w.cache is not None:
        c = w.cache
        out.write(f"  cache   {for_terminal(c.name)} (0x{c.address:x}): object size {c.object_size}"
                  f", slot {c.size}, {c.objects_per_slab} per slab\n")
        out.write(f"  slab    0x{w.slab:x}\n")
        if w.object is not None:
            where = "the slab's" if w.free_on == "slab" else w.free_on + "'s"
            state = f"free (on {where} freelist)" if w.free else "allocated"
            out.write(f"  object  0x{w.object:x} + {w.offset} (index {w.index}): {state}\n")
    if w.note:
        out.write(f"  note    {w.note}\n")
