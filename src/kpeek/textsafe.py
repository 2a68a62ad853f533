"""Untrusted names from the kernel (comm, paths) made safe for each output.

Names are kept in the model as ``str`` decoded with ``surrogateescape`` so the
original bytes survive; these helpers show them without letting control
characters, escape sequences or invalid UTF-8 act on a terminal.
"""

from __future__ import annotations


def decode(raw: bytes) -> str:
    """Bytes from the kernel as str, invalid UTF-8 kept as surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


def encode(name: str) -> bytes:
    """The exact bytes a name came from (inverse of :func:`decode`)."""
    return name.encode("utf-8", "surrogateescape")


def for_terminal(name: str) -> str:
    r"""One printable line: controls as \n, \t, \xNN; bad bytes as \xNN; backslash doubled."""
    # Nearly every name needs no escape: every character below is printable.
    if name.isprintable() and "\\" not in name:
        return name
    out: list[str] = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in (0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
