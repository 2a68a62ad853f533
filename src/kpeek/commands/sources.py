"""kpeek sources: which facts come from where on this kernel (as ``kpeek
doctor --explain-sources``), and the BPF programs kpeek keeps.

  kpeek sources                  where each fact comes from, and why not elsewhere
  kpeek sources --json
  kpeek sources --forget-kept    remove the kept BPF programs from /sys/fs/bpf/kpeek

After loading its BPF programs (libbpf relocates them against the kernel's
BTF and the verifier checks them), kpeek running as root pins them in
/sys/fs/bpf/kpeek when a bpffs is mounted there, so that the next kpeek
starts without loading them again. They are kept for this kernel, boot and
kpeek version only. KPEEK_KEEP_BPF=0 turns this off.
"""

from __future__ import annotations

import argparse
import dataclasses

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import EXIT_OK
from kpeek.render import text
from kpeek.textsafe import for_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sources", help="where each fact comes from here; kept BPF programs",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_json(p)
    p.add_argument("--forget-kept", action="store_true",
                   help="remove the BPF programs kpeek keeps pinned in /sys/fs/bpf/kpeek")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return forget(args) if args.forget_kept else explain(args)


def forget(args: argparse.Namespace) -> int:
    from kpeek.sources.bpf import kept

    removed = kept.forget()  # OSError (not root) is the CLI's "not permitted", exit 3
    if args.json:
        jsonout.emit("kept", {"directory": kept.HOME, "removed": removed})
    elif removed:
        print(f"removed {len(removed)} kept BPF objects from {kept.HOME}:")
        for name in removed:
            print(f"  {for_terminal(name)}")
    else:
        print(f"no kept BPF programs in {kept.HOME}")
    return EXIT_OK


def explain(args: argparse.Namespace) -> int:
    from kpeek.sources.bpf import kept
    from kpeek.sources.explain import FactSource, explain_sources, kernel_features

    features = kernel_features()
    facts = explain_sources(features)
    if features.snapshot_error is None:
        how, why = kept.describe()
        facts.append(FactSource("the BPF programs themselves", how, why))
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
