"""kpeek sym: a kernel symbol by address or by name (from /proc/kallsyms).

  kpeek sym do_sys_openat2          address, type and size of a symbol
  kpeek sym ffffffff816d2235        which function holds that address
"""

from __future__ import annotations

import argparse
import sys

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


def has_data_symbols(syms: Kallsyms) -> bool:
    """Whether kallsyms lists data (CONFIG_KALLSYMS_ALL): jiffies is in every kernel."""
    return syms.symbol("jiffies") is not None or syms.symbol("jiffies_64") is not None


def btf_variable(name: str, btf) -> dict | None:
    """A variable BTF describes (per-CPU ones on most kernels): its section, the
    offset in it, its size and type; None when BTF has no such variable."""
    from kpeek.kernel.btf import Kind

    var = btf.find(name, (Kind.VAR,))
    if var is None:
        return None
    for sec in (t for t in btf.types() if t.kind == Kind.DATASEC):
        for info in sec.section_vars:
            if info.type_id == var.id:
                return {"name": name, "section": sec.name, "offset": info.offset,
                        "size": info.size, "type": var.target.c_name}
    return {"name": name, "section": None, "offset": None, "size": None,
            "type": var.target.c_name}


def _not_in_kallsyms(what: str, syms: Kallsyms, args: argparse.Namespace) -> dict:
    """A name kallsyms does not list: a BTF variable record, or a one-line error
    that says why (no data symbols in this kernel's kallsyms)."""
    from kpeek.targets import open_types

    found = btf_variable(what, open_types(args)) if what.isidentifier() else None
    if found is not None:
        return found
    why = "" if has_data_symbols(syms) else (
        "; this kernel's kallsyms lists functions only, no data symbols "
        "(CONFIG_KALLSYMS_ALL is off), and its BTF has no variable of that name")
    raise UsageError(f"{what}: no kernel symbol of that name{why}")


def run(args: argparse.Namespace) -> int:
    syms = open_symbols(args, "kpeek sym")
    results = []
    variables = []
    for what in args.what:
        if syms.symbol(what) is None and what.isidentifier() and not _is_hex(what):
            variables.append(_not_in_kallsyms(what, syms, args))
            continue
        address, sym = resolve(what, syms)
        if sym is None:
            raise UsageError(f"{what}: no kernel symbol holds address 0x{address:x}")
        results.append((what, address, sym))
    if variables:
        return _show_variables(variables, results, args)
    if args.json:
        from kpeek import jsonout  # only here: orjson costs start-up time

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


def _is_hex(word: str) -> bool:
    try:
        int(word, 16)
        return True
    except ValueError:
        return False


def _show_variables(variables: list[dict], results: list, args: argparse.Namespace) -> int:
    """Names found only as BTF variables (printed after any kallsyms answers)."""
    if args.json:
        from kpeek import jsonout

        jsonout.emit("sym", {"symbols": [
            {"query": what, "address": f"0x{address:x}", "name": sym.name,
             "symbol_address": f"0x{sym.address:x}", "offset": address - sym.address,
             "size": sym.size, "kind": sym.kind, "module": sym.module}
            for what, address, sym in results
        ], "btf_variables": variables})
        return 0
    for _what, address, sym in results:
        sys.stdout.write(f"{address:016x} ({sym.kind}) {sym.name}/0x{sym.size:x}\n")
    for v in variables:
        where = (f"offset 0x{v['offset']:x} in {v['section']}, size 0x{v['size']:x}"
                 if v["section"] else "no section record")
        percpu = " (per-CPU: the offset is from each CPU's per-CPU area)" if (
            v["section"] or "").endswith("percpu") else ""
        sys.stdout.write(f"{v['name']}: BTF variable, {v['type']}; {where}{percpu}; "
                         "not in kallsyms\n")
    return 0
