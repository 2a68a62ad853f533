"""JSON output: every document carries a schema name and version."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from typing import Any, TextIO

SCHEMA_VERSION = 1


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(kind: str, payload: dict[str, Any]) -> str:
    """A JSON document ``{"schema": "kpeek.<kind>/<version>", ...payload}``.

    ensure_ascii keeps invalid UTF-8 (held as surrogate escapes) exact and
    the document valid: ``json.loads`` gives back the same str. One line, no
    indent: only then does json use its C encoder (pipe to ``jq`` to read it).
    """
    doc = {"schema": f"kpeek.{kind}/{SCHEMA_VERSION}", **payload}
    return json.dumps(doc, default=_default, ensure_ascii=True, separators=(",", ":"))


def emit(kind: str, payload: dict[str, Any], out: TextIO | None = None) -> None:
    (out or sys.stdout).write(dumps(kind, payload) + "\n")
