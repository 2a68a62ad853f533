"""Targets: what kpeek looks at, opened as one :class:`~kpeek.kernel.program.Kernel`.

The live kernel by default; a crash dump with the global ``-c/--core FILE``.
Verbs ask for the kernel here and never care which one they got.
"""

from __future__ import annotations

import argparse

from kpeek.errors import NotSupported

# The kernel layer is imported where it is used: kpeek sym needs only the
# symbols, kpeek struct only the types.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kpeek.kernel.btf import Btf
    from kpeek.kernel.program import Kernel
    from kpeek.kernel.symbols import Kallsyms

_dumps: dict[str, Kernel] = {}


def core_path(args: argparse.Namespace) -> str | None:
    """The dump named with ``-c/--core``, or None for the live kernel."""
    return getattr(args, "core", None)


def open_kernel(args: argparse.Namespace, what: str, *, symbols: bool = True) -> Kernel:
    """The kernel the user asked for: the dump given with ``-c``, else the
    live kernel (root only; ``what`` names the verb in the refusal)."""
    core = core_path(args)
    if core is not None:
        if core not in _dumps:  # one open per run, however many times a verb asks
            from kpeek.targets.dump import open_dump

            _dumps[core] = open_dump(core, vmlinux=getattr(args, "vmlinux", None))
        return _dumps[core]
    from kpeek.targets.live import open_live, require_root

    require_root(what)
    return open_live(symbols=symbols)


def open_types(args: argparse.Namespace) -> Btf:
    """The target's BTF types alone (no root needed on the live kernel)."""
    if core_path(args) is not None:
        return open_kernel(args, "reading types").types
    from kpeek.kernel.btf import load_vmlinux_btf

    return load_vmlinux_btf()


def open_symbols(args: argparse.Namespace, what: str) -> Kallsyms:
    """The target's kernel symbols (root needed on the live kernel)."""
    if core_path(args) is not None:
        symbols = open_kernel(args, what).symbols
        if symbols is None:
            raise NotSupported(f"{core_path(args)}: no kernel symbols found in the dump")
        return symbols
    from kpeek.kernel.symbols import Kallsyms
    from kpeek.targets.live import require_root

    require_root(what)
    return Kallsyms.load_indexed()  # kpeek sym NAME: this boot's index answers
