"""JSON output: every document carries a schema name and version.

Encoded with orjson (a C encoder, several times faster than the standard
library's on large documents) into the exact bytes ``json.dumps(...,
ensure_ascii=True, separators=(",", ":"))`` gives: one line, ASCII only,
non-ASCII as ``\\uXXXX`` escapes, so invalid UTF-8 held as surrogate escapes
stays exact and the document valid (``json.loads`` gives back the same str).
"""

from __future__ import annotations

import codecs
import enum
import sys
from collections.abc import Iterable

import orjson

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any, TextIO

SCHEMA_VERSION = 1
_OPTIONS = orjson.OPT_NON_STR_KEYS
# Where orjson writes a float unlike Python's repr (1.5e-6 vs 1.5e-06, 0.00001
# vs 1e-05), the number holds "e-" or starts with "0.0000".
_ODD_FLOATS = (b"e-", b"0.0000")
_NUMBER = frozenset(b"0123456789.-")


def _default(obj: Any) -> Any:
    import dataclasses  # loaded already wherever a dataclass exists (6 ms otherwise)

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _json_escapes(err: UnicodeError) -> tuple[str, int]:
    """Encoding error handler: non-ASCII as JSON's \\uXXXX, as json.dumps writes it."""
    assert isinstance(err, UnicodeEncodeError)
    out = []
    for ch in err.object[err.start : err.end]:
        code = ord(ch)
        if code > 0xFFFF:  # a UTF-16 surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out), err.end


codecs.register_error("kpeek-json", _json_escapes)


def _has_surrogates(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return True
    return False


def _surrogates_escaped(obj: Any) -> Any:
    """``obj`` with every str that holds surrogates (invalid UTF-8 from the
    kernel, which orjson refuses) replaced by its finished JSON text."""
    if isinstance(obj, str):
        return orjson.Fragment(_stdlib(obj)) if _has_surrogates(obj) else obj
    if isinstance(obj, dict):
        if any(isinstance(k, str) and _has_surrogates(k) for k in obj):
            raise ValueError("a key with surrogates")
        return {k: _surrogates_escaped(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_surrogates_escaped(v) for v in obj]
    if isinstance(obj, orjson.Fragment) or obj is None or isinstance(obj, (bool, int, float)):
        return obj
    return _surrogates_escaped(_default(obj))


def _odd_floats(out: bytes) -> bool:
    """Whether orjson may have written a float as Python's repr would not:
    a hit that is a whole number token, not text inside a string such as a
    UUID (bytes.find, not re: this scans every document)."""
    for needle in _ODD_FLOATS:
        at = out.find(needle)
        while at > 0:
            start = at
            while start > 0 and out[start - 1] in _NUMBER:
                start -= 1
            if out[start - 1 : start] in (b":", b",", b"["):
                return True
            at = out.find(needle, at + 1)
    return False


def _stdlib(obj: Any) -> bytes:
    import json  # the rare exact fallback; orjson does the common case

    return json.dumps(obj, default=_default, ensure_ascii=True, separators=(",", ":")).encode()


def encode(obj: Any) -> bytes:
    """``obj`` as compact, ASCII-only JSON bytes (see the module docstring)."""
    try:
        out = orjson.dumps(obj, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        try:
            out = orjson.dumps(_surrogates_escaped(obj), default=_default, option=_OPTIONS)
        except (ValueError, orjson.JSONEncodeError):  # e.g. an int wider than 64 bits
            return _stdlib(obj)
    if _odd_floats(out):
        return _stdlib(obj)
    if not out.isascii():  # only inside strings: escape just those characters
        out = out.decode().encode("ascii", "kpeek-json")
    if b"\x7f" in out:  # ASCII, so orjson left it; json.dumps escapes it
        out = out.replace(b"\x7f", b"\\u007f")
    return out


def dumps(kind: str, payload: dict[str, Any]) -> str:
    """A JSON document ``{"schema": "kpeek.<kind>/<version>", ...payload}``, one line."""
    doc = {"schema": f"kpeek.{kind}/{SCHEMA_VERSION}", **payload}
    return encode(doc).decode("ascii")


def emit(kind: str, payload: dict[str, Any], out: TextIO | None = None) -> None:
    doc = {"schema": f"kpeek.{kind}/{SCHEMA_VERSION}", **payload}
    write_document((encode(doc),), out)


def write_document(chunks: Iterable[bytes], out: TextIO | None = None) -> None:
    """An encoded document, given in pieces, and a newline: as bytes straight
    out (no str copy of a document of tens of MB), each piece as it comes."""
    out = out or sys.stdout
    raw = getattr(out, "buffer", None)
    if raw is None:  # a StringIO (tests): text it is
        out.write(b"".join(chunks).decode("ascii") + "\n")
        return
    out.flush()
    for chunk in chunks:
        raw.write(chunk)
    raw.write(b"\n")
    raw.flush()
