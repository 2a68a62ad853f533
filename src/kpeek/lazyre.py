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
_META = frozenset(".^$*+?{}[]\\|()")
_QUANTIFIERS = frozenset("*+?{")


def literal_prefix(pattern: str) -> str:
    """The text every match of ``pattern`` (no flags) starts with: its leading
    plain characters, less one a quantifier follows; "" when a top-level
    alternative could match without it."""
    end = 0
    while end < len(pattern) and pattern[end] not in _META:
        end += 1
    if end < len(pattern) and pattern[end] in _QUANTIFIERS:
        end -= 1
    if end <= 0:
        return ""
    depth, i = 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 1  # the escaped character
        elif ch == "[":  # a class: "]" right after "[" or "[^" is a member
            i += 2 if pattern[i + 1 : i + 2] == "^" else 1
            i += pattern[i : i + 1] == "]"
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return ""
        i += 1
    return pattern[:end]


class Lazy:
    """Stands for the ``re.Pattern`` of ``pattern``: its match methods, groups,
    groupindex... ``.pattern`` is known without compiling (patterns get joined)."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self._flags = flags
        self._literal: str | None = None

    def _misses(self, string: object) -> bool:
        """Whether a search cannot match for want of the pattern's literal
        start: most report patterns start with one ("BUG: KASAN:"), and most
        lines lack it; such a search answers without compiling."""
        if self._flags or not isinstance(string, str):
            return False
        if self._literal is None:
            self._literal = literal_prefix(self.pattern)
        return bool(self._literal) and self._literal not in string

    def search(self, string: str, *args: Any) -> re.Match[str] | None:
        if not args and self._misses(string):
            return None
        return self.__getattr__("search")(string, *args)

    def match(self, string: str, *args: Any) -> re.Match[str] | None:
        if not args and self._misses(string):
            return None
        return self.__getattr__("match")(string, *args)

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
