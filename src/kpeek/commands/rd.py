"""kpeek rd: a hex dump of live kernel memory, words that are kernel text symbolized.

  kpeek rd 0xffff888100268000 -n 8          eight 8-byte words
  kpeek rd do_sys_openat2 -n 32 -w 1        32 bytes of kernel text
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import UsageError
from kpeek.kernel.address import parse_address
from kpeek.targets import open_kernel

MAX_BYTES = 1 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rd",
        help="hex dump of kernel memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", metavar="ADDR", help="hex address or symbol[+off]")
    p.add_argument("-n", "--count", type=int, default=8, metavar="COUNT",
                   help="number of units to read (default 8)")
    p.add_argument("-w", "--width", type=int, default=8, choices=(1, 2, 4, 8),
                   help="unit size in bytes (default 8)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.count < 1 or args.count * args.width > MAX_BYTES:
        raise UsageError(f"-n COUNT must be 1..{MAX_BYTES // args.width} for width {args.width}")
    kernel = open_kernel(args, "kpeek rd")
    address = parse_address(args.address, kernel.symbols)
    if address % args.width:
        raise UsageError(f"address 0x{address:x} is not aligned to {args.width} bytes")
    data = kernel.memory.read(address, args.count * args.width)
    w = args.width
    words = [int.from_bytes(data[i : i + w], "little") for i in range(0, len(data), w)]
    syms = kernel.symbols

    def symbol_of(value: int) -> str | None:
        if w != 8 or syms is None or value == 0:
            return None
        sym = syms.lookup(value)  # only code: data markers span whole sections
        return syms.format(value) if sym is not None and sym.is_function else None

    if args.json:
        jsonout.emit("rd", {
            "address": f"0x{address:x}",
            "width": w,
            "words": [
                {"address": f"0x{address + i * w:x}", "value": f"0x{v:0{2 * w}x}",
                 "symbol": symbol_of(v)}
                for i, v in enumerate(words)
            ],
        })
        return 0
    per_line = 16 // w
    out = sys.stdout
    for start in range(0, len(words), per_line):
        line_words = words[start : start + per_line]
        raw = data[start * w : (start + len(line_words)) * w]
        hexes = " ".join(f"{v:0{2 * w}x}" for v in line_words)
        hexes = hexes.ljust(per_line * (2 * w + 1) - 1)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in raw)
        names = [s for s in (symbol_of(v) for v in line_words) if s]
        tail = f"   {' '.join(names)}" if names else ""
        out.write(f"{address + start * w:016x}:  {hexes}  {text.ljust(16)}{tail}\n")
    return 0
