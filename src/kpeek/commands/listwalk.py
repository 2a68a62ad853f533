"""kpeek list: walk a kernel list_head (or hlist) with integrity checks.

  kpeek list HEAD -s task_struct.sibling               entries of a list
  kpeek list TASK --head task_struct.children -s task_struct.sibling
  kpeek list HEAD -o 0x98 --max 50                     raw: entry = node - 0x98
  kpeek list HEAD -s task_struct.sibling -f pid,comm   show members of each entry

The walk stops at a cycle that skips the head, a broken back-link
(next->prev != entry), LIST_POISON values (use after list_del), a
self-pointing entry or an unreadable pointer, and names the entry.
Exit code 1 when the list is corrupted, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import EXIT_FINDINGS, UsageError
from kpeek.kernel.address import parse_address
from kpeek.kernel.btf import Kind
from kpeek.kernel.lists import DEFAULT_MAX
from kpeek.targets import open_kernel, open_types

_MAX_OFFSET = 1 << 20
_REWALKS = 4  # walks after the first before a moving fault is called "changing"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="walk a kernel linked list, checking its integrity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", metavar="ADDR",
                   help="address of the list head (hex or symbol+off); with --head, "
                        "of the object holding it")
    p.add_argument("-s", "--struct", metavar="TYPE.member",
                   help="entry type and its list node member (list_for_each_entry)")
    p.add_argument("-o", "--offset", metavar="OFFSET",
                   help="offset of the node in each entry, instead of -s (e.g. 0x98)")
    p.add_argument("-H", "--head", metavar="TYPE.member",
                   help="ADDR is a TYPE whose member is the list head")
    p.add_argument("-f", "--fields", metavar="a,b",
                   help="members of each entry to show (needs -s)")
    p.add_argument("--hlist", action="store_true", help="an hlist_head/hlist_node list")
    p.add_argument("--max", type=int, default=1000, metavar="N",
                   help=f"stop after N entries (default 1000, at most {DEFAULT_MAX})")
    add_json(p)
    p.set_defaults(func=run)


def _type_member(spec: str, what: str) -> tuple[str, str]:
    name, dot, member = spec.partition(".")
    if not dot or not name or not member:
        raise UsageError(f"{what} wants TYPE.member, got {spec!r}")
    return name, member


def run(args: argparse.Namespace) -> int:
    from kpeek.commands.struct import json_value, lookup_type, scalar_text

    if args.struct and args.offset:
        raise UsageError("give either -s TYPE.member or -o OFFSET, not both")
    if args.fields and not args.struct:
        raise UsageError("-f needs -s TYPE.member (the entries' type)")
    if not 1 <= args.max <= DEFAULT_MAX:
        raise UsageError(f"--max must be between 1 and {DEFAULT_MAX}")
    entry_type = None
    offset = 0
    if args.struct:
        tname, member = _type_member(args.struct, "-s")
        entry_type = lookup_type(tname, open_types(args))
        offset = entry_type.resolve().offsetof(member)
    elif args.offset:
        try:
            offset = int(args.offset, 0)
        except ValueError:
            raise UsageError(f"bad offset {args.offset!r}") from None
        if not 0 <= offset < _MAX_OFFSET:  # no kernel struct is this large
            raise UsageError(f"offset {args.offset!r} must be from 0 to 0x{_MAX_OFFSET - 1:x}")
    fields = [f.strip() for f in args.fields.split(",")] if args.fields else []
    if entry_type is not None:
        for f in fields:
            entry_type.resolve().member(f)
    head_extra = 0
    if args.head:
        htype, hmember = _type_member(args.head, "--head")
        head_extra = lookup_type(htype, open_types(args)).resolve().offsetof(hmember)

    kernel = open_kernel(args, "kpeek list")
    head = parse_address(args.address, kernel.symbols) + head_extra
    walk = kernel.list_entries(head, hlist=args.hlist, max_entries=args.max)
    transient, changing = None, False
    if walk.finding is not None and walk.finding.is_corruption:
        # A live list may change under the walk (children come and go): walk
        # again over freshly read memory; only a fault two walks in a row
        # find at the same place is corruption. One that moves is "changing".
        first, previous = walk.finding, walk
        for _ in range(_REWALKS):
            kernel.reread()
            again = kernel.list_entries(head, hlist=args.hlist, max_entries=args.max)
            if again.finding is None or not again.finding.is_corruption:
                transient, walk = first, again
                break
            if _same_fault(again.finding, previous.finding):
                walk = again
                break
            previous = again
        else:
            changing, walk = True, previous
    walk.entry_offset = offset

    rows = []
    for i, (node, entry) in enumerate(zip(walk.nodes, walk.entries, strict=True)):
        row: dict = {"index": i, "entry": f"0x{entry:x}", "node": f"0x{node:x}"}
        if fields and entry_type is not None:
            obj = kernel.object(entry_type, entry)
            if args.json:
                row["fields"] = {f: json_value(obj.member(f)) for f in fields}
            else:
                row["text"] = "  ".join(
                    f"{f}={_field_text(obj.member(f), kernel.symbols, scalar_text)}"
                    for f in fields
                )
        rows.append(row)
    finding = walk.finding
    if args.json:
        jsonout.emit("list", {
            "head": f"0x{head:x}",
            "kind": "hlist" if args.hlist else "list_head",
            "entry_type": entry_type.c_name if entry_type is not None else None,
            "entry_offset": offset,
            "count": len(rows),
            "complete": finding is None,
            "changing": changing,
            "entries": rows,
            "transient_finding": None if transient is None else {
                "kind": transient.kind, "message": transient.message},
            "finding": None if finding is None else {
                "kind": finding.kind,
                "node": f"0x{finding.node:x}",
                "entry": f"0x{finding.node - offset:x}" if finding.index >= 0 else None,
                "index": finding.index,
                "pointer": f"0x{finding.pointer:x}",
                "message": finding.message,
                "corruption": finding.is_corruption and not changing,
            },
        })
    else:
        out = sys.stdout
        if transient is not None:
            out.write(f"note: a first walk saw {transient.kind} ({transient.message}); a second "
                      "walk did not: the list was changing, not corrupted\n")
        for row in rows:
            extra = f"  {row['text']}" if "text" in row else ""
            out.write(f"{row['index']:5d}  {row['entry']}{extra}\n")
        if finding is None:
            out.write(f"{len(rows)} entries; the list returns to its head\n")
        else:
            where = "the head" if finding.index < 0 else (
                f"entry #{finding.index} 0x{finding.node - offset:x}")
            label = "CORRUPTED" if finding.is_corruption else "stopped"
            if changing:
                label = f"changing: {1 + _REWALKS} walks each stopped elsewhere; last"
            out.write(f"{len(rows)} entries; {label} ({finding.kind}) at {where}: "
                      f"{finding.message}\n")
    corrupt = finding is not None and finding.is_corruption and not changing
    return EXIT_FINDINGS if corrupt else 0


def _same_fault(a, b) -> bool:
    """Two walks' findings name one fault: same kind, node and pointer."""
    return (a.kind, a.node, a.pointer) == (b.kind, b.node, b.pointer)


def _field_text(obj, symbols, scalar_text) -> str:
    from kpeek.kernel.objects import is_text_element
    from kpeek.textsafe import for_terminal

    r = obj.type.resolve()
    if r.kind == Kind.ARRAY and is_text_element(r.btf.type(r.array_info[0])):
        return '"' + for_terminal(obj.value()) + '"'
    if r.kind in (Kind.STRUCT, Kind.UNION, Kind.ARRAY):
        return for_terminal(str(obj.value()))
    return for_terminal(scalar_text(obj, symbols))
