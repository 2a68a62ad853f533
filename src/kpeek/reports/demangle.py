"""Rust v0 and C++ symbol demangling, enough for kernel stack traces.

Rust code in the kernel (binder, drivers) shows up in stack traces with
v0-mangled names such as
``_RNvMs3_NtCshgDM7dBCdno_11rust_binder7processNtB5_7Process10update_ref``,
which is ``<rust_binder::process::Process>::update_ref``. Titles and skip
rules work on the readable form. Written from the v0 grammar in the Rust
RFC 2603; anything outside the subset we decode returns None, and callers
keep the mangled name.
"""

from __future__ import annotations

_BASIC_TYPES = {
    "a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8",
    "i": "isize", "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128",
    "s": "i16", "t": "u16", "u": "()", "v": "...", "x": "i64", "y": "u64", "z": "!",
    "p": "_",
}
_MAX_DEPTH = 64


class _Invalid(Exception):
    pass


class _Parser:
    def __init__(self, sym: str) -> None:
        self.sym = sym
        self.pos = 0
        self.depth = 0

    def peek(self) -> str:
        return self.sym[self.pos] if self.pos < len(self.sym) else ""

    def take(self) -> str:
        if self.pos >= len(self.sym):
            raise _Invalid
        ch = self.sym[self.pos]
        self.pos += 1
        return ch

    def eat(self, ch: str) -> bool:
        if self.peek() == ch:
            self.pos += 1
            return True
        return False

    def base62(self) -> int:
        if self.eat("_"):
            return 0
        value = 0
        while True:
            ch = self.take()
            if ch == "_":
                return value + 1
            if ch.isdigit():
                digit = ord(ch) - ord("0")
            elif "a" <= ch <= "z":
                digit = 10 + ord(ch) - ord("a")
            elif "A" <= ch <= "Z":
                digit = 36 + ord(ch) - ord("A")
            else:
                raise _Invalid
            value = value * 62 + digit

    def decimal(self) -> int:
        start = self.pos
        while self.peek().isdigit():
            self.pos += 1
        if start == self.pos:
            raise _Invalid
        return int(self.sym[start:self.pos])

    def disambiguator(self) -> None:
        if self.eat("s"):
            self.base62()

    def ident(self) -> str:
        self.disambiguator()
        punycode = self.eat("u")
        length = self.decimal()
        self.eat("_")
        text = self.sym[self.pos:self.pos + length]
        if len(text) != length:
            raise _Invalid
        self.pos += length
        return text if not punycode else f"{{punycode {text}}}"

    def backref(self, parse) -> str:
        target = self.base62()
        if target >= self.pos:
            raise _Invalid
        saved = self.pos
        self.pos = target
        try:
            return parse()
        finally:
            self.pos = saved

    def path(self) -> str:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Invalid
        try:
            tag = self.take()
            if tag == "C":
                return self.ident()
            if tag == "M":
                self.disambiguator()
                self.path()  # the impl's own path is not shown
                return f"<{self.type()}>"
            if tag == "X":
                self.disambiguator()
                self.path()
                ty = self.type()
                return f"<{ty} as {self.path()}>"
            if tag == "Y":
                ty = self.type()
                return f"<{ty} as {self.path()}>"
            if tag == "N":
                ns = self.take()
                parent = self.path()
                name = self.ident()
                # Lowercase: the ordinary type (t) and value (v) namespaces;
                # uppercase: compiler-made items (C closures, S shims).
                if ns == "C":
                    return f"{parent}::{{closure}}"
                if ns.isupper():
                    return f"{parent}::{{shim:{name}}}" if name else f"{parent}::{{shim}}"
                return f"{parent}::{name}" if name else parent
            if tag == "I":
                base = self.path()
                args = []
                while not self.eat("E"):
                    args.append(self.generic_arg())
                return f"{base}::<{', '.join(args)}>"
            if tag == "B":
                return self.backref(self.path)
            raise _Invalid
        finally:
            self.depth -= 1

    def generic_arg(self) -> str:
        if self.eat("L"):
            self.base62()
            return "'_"
        if self.eat("K"):
            return self.const()
        return self.type()

    def const(self) -> str:
        if self.eat("B"):
            return self.backref(self.const)
        ty = self.take()
        if ty == "p":
            return "_"
        negative = self.eat("n")
        start = self.pos
        while self.peek() != "_":
            self.take()
        digits = self.sym[start:self.pos]
        self.take()
        value = int(digits, 16) if digits else 0
        return f"{'-' if negative else ''}{value}"

    def type(self) -> str:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Invalid
        try:
            ch = self.peek()
            if ch in _BASIC_TYPES:
                self.pos += 1
                return _BASIC_TYPES[ch]
            if ch == "R" or ch == "Q":
                self.pos += 1
                if self.eat("L"):
                    self.base62()
                return ("&" if ch == "R" else "&mut ") + self.type()
            if ch == "P" or ch == "O":
                self.pos += 1
                return ("*const " if ch == "P" else "*mut ") + self.type()
            if ch == "A":
                self.pos += 1
                ty = self.type()
                return f"[{ty}; {self.const()}]"
            if ch == "S":
                self.pos += 1
                return f"[{self.type()}]"
            if ch == "T":
                self.pos += 1
                items = []
                while not self.eat("E"):
                    items.append(self.type())
                return f"({', '.join(items)})"
            if ch == "B":
                self.pos += 1
                return self.backref(self.type)
            return self.path()
        finally:
            self.depth -= 1


def demangle_rust(name: str) -> str | None:
    """The readable form of a Rust v0 symbol (``_R...``), or None if it is not one."""
    if not name.startswith("_R") or len(name) > 1024:
        return None
    body = name[2:]
    parser = _Parser(body)
    try:
        if parser.peek().isdigit():
            parser.decimal()  # encoding version
        return parser.path()
    except (_Invalid, ValueError, RecursionError):
        return None


def demangle_cpp(name: str, *, params: bool = True) -> str | None:
    """An Itanium C++ symbol (``_Z8fakeNameiii``) demangled by the C++ runtime's
    own demangler (``fakeName(int, int, int)``); without ``params``, only the
    qualified name (``fakeName``), as titles use it. None when it is not one."""
    if not name.startswith("_Z") or len(name) > 4096:
        return None
    try:
        import cxxfilt

        plain = cxxfilt.demangle(name, external_only=False)
    except Exception:  # not a C++ name, or no C++ runtime on this machine
        return None
    if not plain or plain == name:
        return None
    return plain if params else _without_params(plain)


def _without_params(plain: str) -> str:
    """``ns::f(int, char*) const`` -> ``ns::f``: drop the last top-level ``(...)``."""
    end = plain.rfind(")")
    depth = 0
    for i in range(end, -1, -1):
        ch = plain[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            depth -= 1
            if depth == 0:
                return plain[:i] or plain
    return plain


def demangle(name: str, *, params: bool = True) -> str:
    """``name`` demangled when it is a Rust v0 or C++ symbol, else unchanged.

    The compiler's ``__cfi_``/``__pfx_`` prefixes in front of a Rust symbol
    are kept in front of its demangled form. ``params`` False leaves a C++
    name's parameter list out (titles name functions, not overloads).
    """
    if not name.startswith("_"):  # nearly every kernel function: C, not mangled
        return name
    for prefix in ("", "__cfi_", "__pfx_"):
        if name.startswith(prefix + "_R"):
            plain = demangle_rust(name[len(prefix):])
            return prefix + plain if plain else name
    if name.startswith("_Z"):
        return demangle_cpp(name, params=params) or name
    return name
