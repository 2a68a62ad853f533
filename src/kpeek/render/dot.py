"""Graphviz plumbing: untrusted text made safe for DOT HTML-like labels, and
running ``dot`` to lay a graph out.

Untrusted names (comm, paths) reach a label only through :func:`label_text`:
first made one printable line (textsafe.for_terminal turns newlines, control
characters and invalid UTF-8 into visible escapes), then every character
that HTML-like labels or SVG could read as markup becomes an entity. Graphviz
decodes the entities and writes the text back escaped into SVG, so a name is
always text, never markup.
"""

from __future__ import annotations

import shutil
import subprocess

from kpeek.errors import KpeekError, NotSupported
from kpeek.textsafe import for_terminal

FORMATS = ("dot", "svg", "png")
_DOT_TIMEOUT = 60.0

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def escape(text: str) -> str:
    """``text`` (already printable) with HTML/XML specials as entities.

    Backslashes become entities too, so graphviz never sees an escString
    sequence (\\N, \\G, \\L...) coming from a name; non-ASCII becomes numeric
    entities so the DOT source is plain ASCII.
    """
    out = []
    for ch in text:
        if ch in _ENTITIES:
            out.append(_ENTITIES[ch])
        elif ch == "\\":
            out.append("&#92;")
        elif ord(ch) > 0x7E:
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def label_text(name: str, limit: int | None = None) -> str:
    """An untrusted name as safe label text, shortened in the middle past ``limit``."""
    shown = for_terminal(name)
    if limit is not None and len(shown) > limit:
        keep = max(limit - 1, 2)
        shown = shown[: keep // 2] + "\u2026" + shown[len(shown) - (keep - keep // 2) :]
    return escape(shown)


def have_dot() -> bool:
    return shutil.which("dot") is not None


def run_dot(source: str, fmt: str) -> bytes:
    """Lay out DOT ``source`` with Graphviz and return it as ``fmt`` (dot, svg, png).

    Raises NotSupported when Graphviz is not installed and KpeekError when
    ``dot`` rejects the graph or takes too long.
    """
    if fmt == "dot":
        return source.encode("ascii")
    if fmt not in FORMATS:
        raise KpeekError(f"unknown Graphviz output format {fmt!r}")
    exe = shutil.which("dot")
    if exe is None:
        raise NotSupported("Graphviz is not installed: install the graphviz package for diagrams")
    try:
        done = subprocess.run(
            [exe, f"-T{fmt}"],
            input=source.encode("ascii"),
            capture_output=True,
            timeout=_DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise KpeekError(f"Graphviz took longer than {_DOT_TIMEOUT:.0f}s to lay out") from e
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KpeekError(f"Graphviz failed: {for_terminal(err[-1] if err else 'no message')}")
    return done.stdout
