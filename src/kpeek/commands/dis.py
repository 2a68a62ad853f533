"""kpeek dis: disassemble live kernel text (read through BPF), calls symbolized.

  kpeek dis do_sys_openat2            the whole function
  kpeek dis do_sys_openat2+0x20 -n 5  five instructions from there
"""

from __future__ import annotations

import argparse
import platform
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.address import parse_address
from kpeek.targets import open_kernel

MAX_FUNCTION_BYTES = 64 << 10
_ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dis",
        help="disassemble kernel code",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="FUNC|ADDR", help="function name, symbol+off, or hex address")
    p.add_argument("-n", "--count", type=int, metavar="N",
                   help="instructions to show (default: to the end of the function)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kpeek.kernel.disasm import disassemble

    if args.count is not None and not 1 <= args.count <= 100_000:
        raise UsageError("-n must be between 1 and 100000")
    arch = _ARCH.get(platform.machine())
    if arch is None:
        raise NotSupported(f"no disassembler for {platform.machine()}")
    kernel = open_kernel(args, "kpeek dis")
    syms = kernel.symbols
    assert syms is not None
    address = parse_address(args.target, syms)
    sym = syms.lookup(address)
    if sym is None or not sym.is_function:
        raise UsageError(f"{args.target}: 0x{address:x} is not inside a kernel function")
    end = sym.address + sym.size if sym.size else address + 16 * (args.count or 64)
    size = min(end - address, MAX_FUNCTION_BYTES)
    if args.count is not None:
        size = min(size, 16 * args.count)  # at most 15 bytes per x86 instruction
    code = kernel.memory.read(address, size)

    def symbolize(target: int) -> str | None:
        hit = syms.lookup(target)
        return syms.format(target) if hit is not None and hit.is_function else None

    insns = disassemble(code, address, symbolize, arch)
    if args.count is not None:
        insns = insns[: args.count]
    if args.json:
        jsonout.emit("dis", {
            "function": sym.name,
            "address": f"0x{address:x}",
            "arch": arch,
            "instructions": [
                {"address": f"0x{i.address:x}", "offset": i.address - sym.address,
                 "bytes": i.raw.hex(), "mnemonic": i.mnemonic, "operands": i.operands,
                 "target": i.symbol, "valid": i.valid}
                for i in insns
            ],
        })
        return 0
    out = sys.stdout
    for i in insns:
        where = f"<{sym.name}+{i.address - sym.address}>"
        target = f"  <{i.symbol}>" if i.symbol else ""
        out.write(f"{i.address:016x} {where:<28} {i.mnemonic:<8}{i.operands}{target}\n")
    return 0
