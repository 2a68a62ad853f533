"""Crash dumps (vmcores) as a :class:`~kpeek.kernel.program.Kernel`."""

from __future__ import annotations

from kpeek.errors import NotSupported
from kpeek.kernel.program import Kernel


def open_dump(path: str, *, vmlinux: str | None = None) -> Kernel:
    """The kernel in the dump at ``path``."""
    raise NotSupported(f"{path}: reading crash dumps is not built yet")
