"""Kernel memory, types (BTF), symbols (kallsyms), typed objects and lists."""

from __future__ import annotations

from typing import Any


def open_live(**kwargs: Any) -> Any:
    """The running kernel as a :class:`kpeek.kernel.live.Kernel` (see there)."""
    from kpeek.kernel.live import open_live as _open_live

    return _open_live(**kwargs)
