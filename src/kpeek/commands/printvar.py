"""kpeek print VAR[.member,...]: a global variable by name, with its BTF type
(crash's `p`). The address comes from the kernel's symbols: a dump's own
kallsyms (with -c) lists data; the live kernel's only where it was built with
CONFIG_KALLSYMS_ALL. Per-CPU variables have no single address: `sym VAR`
gives their offset in the per-CPU area.

  kpeek -c vmcore print jiffies
  kpeek -c vmcore print init_task.comm,pid
"""

from __future__ import annotations

import argparse
import sys

from kpeek.commands.common import add_json
from kpeek.commands.struct import lookup_type, show_values, split_type_spec, value_lines
from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.btf import Kind
from kpeek.targets import open_kernel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("print", help="a global variable's value, with its type (crash's p)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("var", metavar="VAR[.member,...]", help="a global variable's name")
    p.add_argument("-t", "--type", metavar="TYPE",
                   help="its type, where BTF has no record of the variable (BTF keeps only "
                        "per-CPU variables on most kernels), e.g. 'long unsigned int'")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    name, members = split_type_spec(args.var)
    if not name.isidentifier():
        raise UsageError(f"{name!r} is not a variable name")
    kernel = open_kernel(args, "kpeek print")
    var = kernel.types.find(name, (Kind.VAR,))
    if var is not None and _in_percpu_section(kernel.types, var.id):
        raise NotSupported(f"{name} is a per-CPU variable: one copy per CPU, no single "
                           f"address (kpeek sym {name} gives its per-CPU offset)")
    if args.type:
        vtype = lookup_type(args.type, kernel.types)
    elif var is not None:
        vtype = var.target
    else:
        raise UsageError(f"{name}: the kernel's BTF has no record of this variable (it keeps "
                         "only per-CPU ones on most kernels): give its type with --type")
    sym = kernel.symbols.symbol(name) if kernel.symbols is not None else None
    if sym is None:
        raise NotSupported(f"{name}: its address is unknown: this kernel's kallsyms lists no "
                           "data symbols (CONFIG_KALLSYMS_ALL is off); a dump (-c) has them")
    obj = kernel.object(vtype, sym.address)
    for m in members:  # unknown members are reported before any read
        if obj.type.resolve().kind not in (Kind.STRUCT, Kind.UNION):
            raise UsageError(f"{name} is not a struct or union; it has no members")
        obj.type.resolve().member(m)
    obj.prefetch()
    if members or args.json:
        return show_values(obj, members, kernel.symbols, args.json)
    lines = value_lines(obj, name, 0, kernel.symbols)  # "name = value," as crash's p
    lines[0] = f"({obj.type.c_name}) {lines[0]}"
    lines[-1] = lines[-1].rstrip(",")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _in_percpu_section(btf, var_id: int) -> bool:
    for sec in (t for t in btf.types() if t.kind == Kind.DATASEC):
        if "percpu" in sec.name and any(v.type_id == var_id for v in sec.section_vars):
            return True
    return False
