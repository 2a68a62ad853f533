"""Addresses typed by a user: hex, symbol names, and sums of them."""

from __future__ import annotations

from kpeek.errors import UsageError
from kpeek.kernel.symbols import Kallsyms


def parse_address(text: str, symbols: Kallsyms | None = None) -> int:
    """An address from the command line: hex (with or without 0x), a symbol
    name, or a sum/difference of those ("do_sys_openat2+0x10", "0xffff...+8").

    Bare numbers are hex, as in crash. Raises UsageError for anything else.
    """
    s = text.strip()
    if not s:
        raise UsageError("empty address")
    total = 0
    sign = 1
    token = ""
    for ch in s + "+":
        if ch in "+-" and token:
            total += sign * _address_term(token.strip(), symbols, text)
            sign = 1 if ch == "+" else -1
            token = ""
        elif ch in "+-":
            raise UsageError(f"bad address {text!r}")
        else:
            token += ch
    if not 0 <= total < 1 << 64:
        raise UsageError(f"address {text!r} is outside the 64-bit address space")
    return total


def _address_term(term: str, symbols: Kallsyms | None, whole: str) -> int:
    digits = term[2:] if term.lower().startswith("0x") else term
    if digits and all(c in "0123456789abcdefABCDEF" for c in digits):
        # A word like "bad" is both hex and maybe a symbol; the symbol wins
        # only when written without 0x and the symbol exists.
        if symbols is not None and not term.lower().startswith("0x"):
            addr = symbols.address_of(term)
            if addr is not None:
                return addr
        return int(digits, 16)
    if symbols is not None:
        addr = symbols.address_of(term)
        if addr is not None:
            return addr
        raise UsageError(f"bad address {whole!r}: no kernel symbol named {term!r}")
    raise UsageError(f"bad address {whole!r}: not a hex number")
