"""Keyed hashes for kernel pointers and identities.

Kernel addresses are secrets (they defeat KASLR), so views show a keyed
hash instead: stable within one run, meaningless across runs.
"""

from __future__ import annotations

import hashlib
import os

_RUN_KEY = os.urandom(16)


def keyed_id(*parts: object, width: int = 12) -> str:
    """A short hex id for ``parts``, keyed with this run's secret."""
    h = hashlib.blake2b(repr(parts).encode(), key=_RUN_KEY, digest_size=16)
    return h.hexdigest()[:width]


def show_pointer(addr: int | None, raw: bool = False) -> str | None:
    """A kernel pointer as the user may see it: raw hex only when asked for."""
    if addr is None:
        return None
    if raw:
        return f"0x{addr:016x}"
    return "#" + keyed_id("ptr", addr)
