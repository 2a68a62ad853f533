"""The "sources" view: which facts come from where on this kernel
(``kpeek doctor --explain-sources``)."""

from __future__ import annotations

import argparse
import dataclasses

from kpeek import jsonout
from kpeek.errors import EXIT_OK
from kpeek.render import text


def explain(args: argparse.Namespace) -> int:
    from kpeek.sources.explain import explain_sources, kernel_features

    features = kernel_features()
    facts = explain_sources(features)
    if args.json:
        jsonout.emit("sources", {"kernel": features.release,
                                 "facts": [dataclasses.asdict(f) for f in facts]})
        return EXIT_OK
    out = text.console()
    out.print(f"Sources of facts on kernel {text.name(features.release)}:")
    for f in facts:
        style = "red" if f.source == "unavailable" else None
        out.print(f"  {f.fact}: ", end="")
        out.print(text.name(f.source), style=style, end="")
        out.print(text.name(f" ({f.why})") if f.why else "", style="dim")
    return EXIT_OK
