"""kpeek struct: a kernel type's layout (like pahole), or its values at an address.

  kpeek struct list_head                      layout: offset, size, type, holes
  kpeek struct task_struct 0xffff...          every member's value
  kpeek struct task_struct.pid,comm 0xffff... only these members
"""

from __future__ import annotations

import argparse
import sys

from kpeek.commands.common import add_json
from kpeek.errors import UsageError
from kpeek.kernel.btf import Btf, Kind, Type, UnknownType, load_vmlinux_btf
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

    from kpeek.kernel.objects import Object
    from kpeek.kernel.symbols import Kallsyms

# A layout needs only the BTF: the kernel layer (objects, symbols, the
# memory reader) and the JSON encoder load when an address or --json asks.

ARRAY_SHOW_MAX = 64  # elements of a scalar array shown in text output


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "struct",
        help="a kernel type's layout, or its values at an address",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("type", metavar="TYPE[.member,member]",
                   help='a struct/union/typedef name ("task_struct", "struct file"), '
                        "optionally with members to show")
    p.add_argument("address", metavar="ADDR", nargs="?",
                   help="address of the object (hex or symbol+off); root only")
    add_json(p)
    p.set_defaults(func=run)


def split_type_spec(spec: str) -> tuple[str, list[str]]:
    """"task_struct.pid,comm" -> ("task_struct", ["pid", "comm"]);
    "struct file.f_mode" -> ("struct file", ["f_mode"])."""
    name, dot, rest = spec.strip().partition(".")
    if not dot:
        return name.strip(), []
    members = [m.strip() for m in rest.split(",")]
    if not all(members):
        raise UsageError(f"bad member list in {spec!r}")
    return name.strip(), members


def lookup_type(name: str, btf: Btf) -> Type:
    """A type by user-given name; struct/union first, as `kpeek struct` means."""
    if " " not in name and not name.endswith("*"):
        t = btf.find(name, (Kind.STRUCT, Kind.UNION, Kind.TYPEDEF, Kind.ENUM, Kind.ENUM64,
                            Kind.INT, Kind.FLOAT))
        if t is not None:
            return t
        raise UnknownType(f"no struct, union or type named {name!r} in the kernel's BTF")
    return btf.lookup(name)


def run(args: argparse.Namespace) -> int:
    name, members = split_type_spec(args.type)
    if getattr(args, "core", None) is None:
        types = load_vmlinux_btf()
    else:
        from kpeek.targets import open_types

        types = open_types(args)
    t = lookup_type(name, types)
    for m in members:  # unknown members are reported before any read
        if t.resolve().kind not in (Kind.STRUCT, Kind.UNION):
            raise UsageError(f"{t.c_name} is not a struct or union; it has no members")
        t.resolve().member(m)
    if args.address is None:
        if members:
            return show_member_layout(t, members, args.json)
        return show_layout(t, args.json)
    from kpeek.kernel.address import parse_address
    from kpeek.targets import open_kernel

    kernel = open_kernel(args, "kpeek struct TYPE ADDR")
    address = parse_address(args.address, kernel.symbols)
    align = alignment(t)
    if address % align:  # as rd refuses: a misaligned object reads as garbage
        raise UsageError(f"address 0x{address:x} is not aligned to {align} bytes, "
                         f"as a {t.c_name} must be")
    obj = kernel.object(t, address)
    obj.prefetch()  # one read; a bad address fails here, as one line
    return show_values(obj, members, kernel.symbols, args.json)


# -- layout --------------------------------------------------------------------


def layout(t: Type) -> dict[str, Any]:
    """The layout of a struct/union as plain data: members (anonymous ones
    nested), holes, padding and totals, offsets counted from the outer type."""
    r = t.resolve()
    if r.kind not in (Kind.STRUCT, Kind.UNION):
        return {"type": t.c_name, "kind": r.kind.name.lower(), "size": _size(r), "members": []}
    totals = {"holes": 0, "hole_bytes": 0, "member_bytes": 0}
    members, end = _layout_members(r, 0, totals)
    doc = {
        "type": r.c_name,
        "kind": r.kind.name.lower(),
        "size": r.size,
        "members": members,
        "padding": max(0, r.size - (end + 7) // 8) if r.kind == Kind.STRUCT else 0,
        "cachelines": (r.size + 63) // 64,
        **totals,
    }
    return doc


def alignment(t: Type, depth: int = 0) -> int:
    """A type's natural alignment: its largest scalar member's size, up to 8;
    1 for a packed struct (one whose size is not a multiple of that)."""
    r = t.resolve()
    if depth > 32:
        return 1
    if r.kind in (Kind.INT, Kind.PTR, Kind.ENUM, Kind.ENUM64, Kind.FLOAT):
        return max(1, min(_size(r) or 1, 8))
    if r.kind == Kind.ARRAY:
        return alignment(r.btf.type(r.array_info[0]), depth + 1)
    if r.kind in (Kind.STRUCT, Kind.UNION):
        align = max((alignment(r.btf.type(m.type_id), depth + 1) for m in r.members),
                    default=1)
        return align if r.size % align == 0 else 1
    return 1


def _named_by_typedef(t: Type) -> bool:
    """Whether ``t`` reaches its struct through a typedef (qualifiers aside)."""
    for _ in range(16):
        if t.kind == Kind.TYPEDEF:
            return True
        if t.kind not in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPE_TAG):
            return False
        t = t.target
    return False


def _size(t: Type) -> int | None:
    try:
        return t.size
    except TypeError:
        return None


def _layout_members(
    r: Type, base_bit: int, totals: dict[str, int], top: bool = True
) -> tuple[list[dict], int]:
    """Members of ``r`` with holes between them; ``totals`` (holes, member
    bytes) count the outer level only, so members + holes + padding = size."""
    btf = r.btf
    out: list[dict] = []
    end = base_bit  # first bit after everything laid out so far (struct)
    union_end = base_bit
    unit_end = 0  # end of the last bitfield's storage unit (its declared type)
    for m in r.members:
        mt = btf.type(m.type_id)
        mr = mt.resolve()
        bit = base_bit + m.bit_offset
        if r.kind == Kind.STRUCT and end < unit_end < bit:
            # As pahole: the bits left in a bitfield's unit are a bit hole of
            # their own; the bytes after the unit are a hole that counts.
            out.append({"hole": 0, "bits": unit_end - end, "offset": end // 8})
            end = unit_end
        if r.kind == Kind.STRUCT and bit > end:
            gap = bit - end
            if gap >= 8 and end % 8 == 0:
                out.append({"hole": gap // 8, "bits": gap % 8, "offset": end // 8})
                if top:
                    totals["holes"] += 1
                    totals["hole_bytes"] += gap // 8
            elif gap:
                out.append({"hole": 0, "bits": gap, "offset": end // 8})
        size = _size(mt) or 0
        entry: dict[str, Any] = {
            "name": m.name,
            "type": mt.c_name,
            "decl": btf.declaration(m.type_id, m.name),
            "offset": bit // 8,
            "size": size,
        }
        if m.bitfield_size:
            entry["bit_offset"] = bit % 8
            entry["bitfield_size"] = m.bitfield_size
            mend = bit + m.bitfield_size
            unit = max(size, 1) * 8
            unit_end = (bit - base_bit) // unit * unit + unit + base_bit
        else:
            mend = bit + size * 8
        # Expand anonymous types in place; one with a typedef name keeps it
        # (``atomic_t counter``, not ``struct { int counter; } counter``), as pahole.
        if not mr.name and mr.kind in (Kind.STRUCT, Kind.UNION) and not _named_by_typedef(mt):
            entry["kind"] = mr.kind.name.lower()
            entry["members"], _ = _layout_members(mr, bit, totals, top=False)
        if top and not m.bitfield_size:
            totals["member_bytes"] += size
        out.append(entry)
        end = max(end, mend)
        union_end = max(union_end, mend)
    return out, (end if r.kind == Kind.STRUCT else union_end)


def layout_text(doc: dict[str, Any]) -> list[str]:
    if not doc["members"] and doc["kind"] not in ("struct", "union"):
        return [f"{doc['type']}: {doc['kind']}, size {doc['size']}"]
    lines = [f"{doc['type']} {{"]
    lines += _members_text(doc["members"], 1)
    lines.append("")
    lines.append(f"\t/* size: {doc['size']}, cachelines: {doc['cachelines']}, "
                 f"members: {len([m for m in doc['members'] if 'name' in m])} */")
    if doc["holes"]:
        lines.append(f"\t/* sum members: {doc['member_bytes']}, holes: {doc['holes']}, "
                     f"sum holes: {doc['hole_bytes']} */")
    if doc["padding"]:
        lines.append(f"\t/* padding: {doc['padding']} */")
    lines.append("};")
    return lines


def _members_text(members: list[dict], depth: int) -> list[str]:
    tab = "\t" * depth
    lines: list[str] = []
    for m in members:
        if "hole" in m:
            if m["hole"]:
                extra = f", {m['bits']} bits" if m["bits"] else ""
                lines.append(f"{tab}/* XXX {m['hole']} bytes{extra} hole, try to pack */")
            else:
                lines.append(f"{tab}/* XXX {m['bits']} bits hole, try to pack */")
            continue
        if "members" in m:
            lines.append(f"{tab}{m['kind']} {{")
            lines += _members_text(m["members"], depth + 1)
            name = f" {m['name']}" if m["name"] else ""
            lines.append(_with_comment(f"{tab}}}{name};", f"{m['offset']:6d} {m['size']:6d}"))
            continue
        decl = _decl_for(m)
        if "bitfield_size" in m:
            where = f"{m['offset']:4d}:{m['bit_offset']:2d} {m['size']:4d}"
        else:
            where = f"{m['offset']:6d} {m['size']:6d}"
        lines.append(_with_comment(f"{tab}{decl};", where))
    return lines


def _decl_for(m: dict) -> str:
    return m["decl"] + (f":{m['bitfield_size']}" if "bitfield_size" in m else "")


def _with_comment(code: str, where: str) -> str:
    width = 56
    visible = len(code.expandtabs(8))
    pad = " " * max(1, width - visible)
    return f"{code}{pad}/* {where} */"


def show_layout(t: Type, as_json: bool) -> int:
    doc = layout(t)
    if as_json:
        from kpeek import jsonout

        jsonout.emit("struct-layout", doc)
        return 0
    sys.stdout.write("\n".join(layout_text(doc)) + "\n")
    return 0


def show_member_layout(t: Type, members: list[str], as_json: bool) -> int:
    r = t.resolve()
    rows = []
    for path in members:
        bit, m = r.member(path)
        mt = r.btf.type(m.type_id)
        row = {"member": path, "type": mt.c_name, "offset": bit // 8, "size": _size(mt) or 0}
        if m.bitfield_size:
            row |= {"bit_offset": bit % 8, "bitfield_size": m.bitfield_size}
        rows.append(row)
    if as_json:
        from kpeek import jsonout

        jsonout.emit("struct-layout", {"type": r.c_name, "size": r.size, "members": rows})
        return 0
    for row in rows:
        bits = f":{row['bit_offset']}+{row['bitfield_size']}b" if "bitfield_size" in row else ""
        sys.stdout.write(f"{r.c_name}.{row['member']}: offset {row['offset']}{bits}, "
                         f"size {row['size']}, type {row['type']}\n")
    return 0


# -- values --------------------------------------------------------------------


def json_value(obj: Object) -> Any:
    """An object's value for JSON: pointers as "0x..." strings, enums by name,
    char arrays as strings, structs as dicts (anonymous members merged)."""
    from kpeek.kernel.objects import is_text_element


    r = obj.type.resolve()
    k = r.kind
    if k == Kind.PTR:
        return f"0x{obj.value_int():x}"
    if k in (Kind.STRUCT, Kind.UNION):
        out: dict[str, Any] = {}
        for name, child in obj.members():
            v = json_value(child)
            if not name and isinstance(v, dict):
                out.update(v)
            else:
                out[name] = v
        return out
    if k == Kind.ARRAY:
        elem_id, _, n = r.array_info
        if is_text_element(r.btf.type(elem_id)):
            return obj.value()
        return [json_value(obj[i]) for i in range(n)]
    return obj.value()


def scalar_text(obj: Object, symbols: Kallsyms | None) -> str:
    """One scalar as crash prints it: ints decimal, pointers hex (functions
    symbolized), enums by name, bools true/false, chars as 'c' too."""
    from kpeek.kernel.objects import is_text_element


    r = obj.type.resolve()
    k = r.kind
    if k == Kind.PTR:
        v = obj.value_int()
        text = f"0x{v:x}"
        if symbols is not None and v:
            sym = symbols.lookup(v)
            if sym is not None and sym.is_function:
                text += f" <{symbols.format(v)}>"
        return text
    v = obj.value()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v  # an enumerator name
    if is_text_element(obj.type) and 32 <= v < 127:
        return f"{v} '{chr(v)}'"
    return str(v)


def value_lines(obj: Object, name: str, depth: int, symbols: Kallsyms | None) -> list[str]:
    """Text lines for ``name = value`` (nested structs and arrays indented)."""
    from kpeek.kernel.objects import is_text_element


    pad = "  " * depth
    lead = f"{pad}{name} = " if name else pad
    r = obj.type.resolve()
    k = r.kind
    if k in (Kind.STRUCT, Kind.UNION):
        lines = [f"{lead}{{"]
        for child_name, child in obj.members():
            lines += value_lines(child, child_name, depth + 1, symbols)
        lines.append(f"{pad}}},")
        return lines
    if k == Kind.ARRAY:
        elem_id, _, n = r.array_info
        elem = r.btf.type(elem_id).resolve()
        if is_text_element(r.btf.type(elem_id)):
            return [f'{lead}"{for_terminal(obj.value())}",']
        if elem.kind in (Kind.STRUCT, Kind.UNION, Kind.ARRAY):
            lines = [f"{lead}{{"]
            for i in range(n):
                lines += value_lines(obj[i], f"[{i}]", depth + 1, symbols)
            lines.append(f"{pad}}},")
            return lines
        shown = [scalar_text(obj[i], symbols) for i in range(min(n, ARRAY_SHOW_MAX))]
        more = f", ... ({n - ARRAY_SHOW_MAX} more)" if n > ARRAY_SHOW_MAX else ""
        return [f"{lead}{{{', '.join(shown)}{more}}},"]
    return [f"{lead}{for_terminal(scalar_text(obj, symbols))},"]


def show_values(obj: Object, members: list[str], symbols: Kallsyms | None, as_json: bool) -> int:
    if as_json:
        from kpeek import jsonout

        values = {m: json_value(obj.member(m)) for m in members} if members else json_value(obj)
        jsonout.emit("struct-value", {
            "type": obj.type.c_name, "address": f"0x{obj.address:x}", "value": values})
        return 0
    if members:
        lines = []
        for m in members:
            sub = value_lines(obj.member(m), m, 0, symbols)
            sub[-1] = sub[-1].rstrip(",")
            lines += sub
    else:
        lines = value_lines(obj, "", 0, symbols)
        lines[0] = f"{obj.type.c_name} {lines[0].strip()}"
        lines[-1] = "}"
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
