"""Regular expressions compiled on first use.

A module that compiles its patterns at import makes every command pay for
all of them; ``lazy(p)`` stands for ``re.compile(p)`` and compiles on the
first match. The oops report table holds ~350 patterns and one report needs
a few dozen: compiling them all was most of a ``kpeek oops FILE``.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

_METHODS = ("search", "match", "fullmatch", "finditer", "findall", "sub", "subn", "split")


class Lazy:
    """Stands for the ``re.Pattern`` of ``pattern``: its match methods, groups,
    groupindex... ``.pattern`` is known without compiling (patterns get joined)."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self._flags = flags

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy and pickle probes: the object as it is
            raise AttributeError(name)
        compiled = re.compile(self.pattern, self._flags)
        for method in _METHODS:  # kept on the instance: later calls go straight there
            setattr(self, method, getattr(compiled, method))
        return getattr(compiled, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lazy) and (self.pattern, self._flags) == (
            other.pattern, other._flags)

    def __hash__(self) -> int:
        return hash((self.pattern, self._flags))

    def __repr__(self) -> str:
        return f"lazy({self.pattern!r})"


def lazy(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile(pattern, flags)``, compiled on first use."""
    return Lazy(pattern, flags)  # type: ignore[return-value]
