"""kpeek sym: a kernel symbol by address or by name (from /proc/kallsyms).

  kpeek sym do_sys_openat2          address, type and size of a symbol
  kpeek sym ffffffff816d2235        which function holds that address
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import UsageError
from kpeek.kernel.address import parse_address
from kpeek.kernel.symbols import Kallsyms, Symbol
from kpeek.targets import open_symbols


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sym",
        help="kernel symbol <-> address",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", metavar="ADDR|NAME", nargs="+", help="addresses or symbol names")
    add_json(p)
    p.set_defaults(func=run)


def resolve(what: str, syms: Kallsyms) -> tuple[int, Symbol | None]:
    """(address asked for, the symbol holding it or None). Names win over bare hex words."""
    by_name = syms.symbol(what)
    if by_name is not None:
        return by_name.address, by_name
    address = parse_address(what, syms)
    return address, syms.lookup(address)


def run(args: argparse.Namespace) -> int:
    syms = open_symbols(args, "kpeek sym")
    results = []
    for what in args.what:
        address, sym = resolve(what, syms)
        if sym is None:
            raise UsageError(f"{what}: no kernel symbol holds address 0x{address:x}")
        results.append((what, address, sym))
    if args.json:
        jsonout.emit("sym", {"symbols": [
            {
                "query": what,
                "address": f"0x{address:x}",
                "name": sym.name,
                "symbol_address": f"0x{sym.address:x}",
                "offset": address - sym.address,
                "size": sym.size,
                "kind": sym.kind,
                "module": sym.module,
            }
            for what, address, sym in results
        ]})
        return 0
    for _what, address, sym in results:
        module = f" [{sym.module}]" if sym.module else ""
        off = address - sym.address
        where = sym.name if off == 0 else f"{sym.name}+0x{off:x}"
        note = ""
        if not sym.is_function and off:
            # kallsyms lists no data symbols here: only section markers
            note = "  (inside a section; kallsyms has no data symbols)"
        sys.stdout.write(f"{address:016x} ({sym.kind}) {where}/0x{sym.size:x}{module}{note}\n")
    return 0
