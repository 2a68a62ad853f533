"""Self-contained HTML pages around Graphviz SVG: one diagram, a trace to step
through, and the live page of ``kpeek serve``.

Pages load nothing from the network: styles and scripts are inlined from the
package (kpeek.css, stepper.js, live.js). Data for scripts travels in a
``<script type="application/json">`` block with every ``<``, ``>`` and ``&``
written as a JSON unicode escape, so no string in it can close the block;
scripts parse SVG with DOMParser as image/svg+xml and set untrusted text
with textContent, never innerHTML.
"""

from __future__ import annotations

import json
from importlib import resources

from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

LEGEND = (
    '<p class="legend"><span class="swatch changed"></span> changed by this step '
    '<span class="swatch blocking"></span> a write end that keeps a reader from '
    "end-of-file &#183; close-on-exec fds are marked &#183; arrows: fd &#8594; open file "
    "&#8594; inode</p>"
)

STATIC_LEGEND = (
    '<p class="legend"><span class="swatch blocking"></span> a write end that keeps a '
    "reader from end-of-file &#183; arrows: fd &#8594; open file &#8594; inode</p>"
)

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def escape(text: str) -> str:
    """Untrusted text as HTML text or attribute value (one printable line)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in for_terminal(text))


def asset(name: str) -> str:
    """The text of a packaged asset (kpeek/render/<name>)."""
    return resources.files("kpeek.render").joinpath(name).read_text("utf-8")


def json_block(element_id: str, data: Any) -> str:
    """``data`` as a JSON script block that no string inside can break out of."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def inline_svg(svg: bytes | str) -> str:
    """Graphviz SVG without its XML prologue, ready to sit inside HTML."""
    text = svg.decode("utf-8") if isinstance(svg, bytes) else svg
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def _page(title: str, body: str, script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
        "connect-src 'self'\">"
        f"<title>{escape(title)}</title><style>{asset('kpeek.css')}</style></head>"
        f"<body>{body}{f'<script>{script}</script>' if script else ''}</body></html>\n"
    )


def diagram_page(svg: bytes, title: str) -> str:
    """One diagram on a page of its own."""
    body = (
        f"<header><h1>{escape(title)}</h1>{STATIC_LEGEND}</header>"
        f'<main id="diagram" class="diagram">{inline_svg(svg)}</main>'
    )
    return _page(title, body)


def trace_page(title: str, steps: list[dict[str, Any]]) -> str:
    """A page that steps through a trace.

    Each step is a dict with "index", "pid", "comm", "call" (the syscall as
    text), "result", "changes" (list of text) and "svg" (Graphviz SVG text).
    """
    body = (
        f"<header><h1>{escape(title)}</h1>"
        '<nav><button id="prev" title="previous step (left arrow)">&#8592; back</button>'
        '<span id="position"></span>'
        '<button id="next" title="next step (right arrow)">forward &#8594;</button>'
        '<input id="slider" type="range" min="0" value="0" aria-label="step"></nav>'
        '<div id="syscall" class="syscall"></div><ul id="changes" class="changes"></ul>'
        + LEGEND
        + "</header>"
        '<main id="diagram" class="diagram"></main>'
        + json_block("steps", steps)
    )
    return _page(title, body, asset("stepper.js"))


def live_page(title: str, config: dict[str, Any]) -> str:
    """The page of ``kpeek serve``: fetches the diagram again every few seconds."""
    body = (
        f"<header><h1>{escape(title)}</h1>"
        '<form id="choose"><label>PIDs <input id="pids" name="pids" size="30"></label>'
        '<button type="submit">show</button> <span id="status" class="status"></span></form>'
        "</header>"
        '<main id="diagram" class="diagram"></main>'
        + json_block("config", config)
    )
    return _page(title, body, asset("live.js"))
