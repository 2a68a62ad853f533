"""Finding report start lines in a large log without per-line Python work.

Each start marker is searched with ``str.find`` over the whole text (C
speed); the scanner keeps, per marker, the next occurrence at or after the
last query, so walking a 100 MB log costs a few passes of ``find``, not a
Python loop over millions of lines.
"""

from __future__ import annotations

from collections.abc import Sequence

_NOWHERE = 1 << 62


class MarkerScanner:
    """Next occurrence of any of ``markers`` in ``text`` at or after an offset."""

    def __init__(self, text: str, markers: Sequence[str]) -> None:
        self._text = text
        self._markers = tuple(markers)
        # Per marker: (offset queried from, first occurrence at or after it).
        self._cache: list[tuple[int, int]] = [(_NOWHERE, _NOWHERE)] * len(self._markers)

    def next_at(self, offset: int) -> int:
        """Offset of the earliest marker occurrence >= ``offset``, or -1."""
        best = _NOWHERE
        text = self._text
        for i, marker in enumerate(self._markers):
            queried, found = self._cache[i]
            if not (queried <= offset <= found):
                pos = text.find(marker, offset)
                found = _NOWHERE if pos < 0 else pos
                self._cache[i] = (offset, found)
            if found < best:
                best = found
        return -1 if best == _NOWHERE else best
