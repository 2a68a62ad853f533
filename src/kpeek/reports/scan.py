"""Finding report start lines in a large log without per-line Python work.

Each start marker is searched with ``str.find`` over the whole text (C
speed). A heap holds, per marker, its next occurrence at or after the
offset it was last searched from, so asking for the next marker after an
offset re-searches only the markers that offset has passed: walking a
100 MB log costs about one ``find`` pass per marker.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

_NOWHERE = 1 << 62


class MarkerScanner:
    """Next occurrence of any of ``markers`` in ``text`` at or after an offset."""

    def __init__(self, text: str, markers: Sequence[str]) -> None:
        self._text = text
        self._markers = tuple(markers)
        # Per marker: searched-from offset and first occurrence at or after it.
        self._since = [0] * len(self._markers)
        self._heap = [(self._find(i, 0), i) for i in range(len(self._markers))]
        heapq.heapify(self._heap)
        self._floor = 0  # the largest offset asked for so far

    def _find(self, index: int, offset: int, end: int | None = None) -> int:
        pos = self._text.find(self._markers[index], offset, end)
        return _NOWHERE if pos < 0 else pos

    def _go_back(self, offset: int) -> None:
        # Only the stretch between ``offset`` and where each marker was last
        # searched from can hold occurrences the heap does not know.
        entries = []
        for pos, i in self._heap:
            since = self._since[i]
            if since > offset:
                earlier = self._find(i, offset, since + len(self._markers[i]) - 1)
                if earlier != _NOWHERE:
                    pos = earlier
                self._since[i] = offset
            entries.append((pos, i))
        heapq.heapify(entries)
        self._heap = entries
        self._floor = offset

    def next_at(self, offset: int) -> int:
        """Offset of the earliest marker occurrence >= ``offset``, or -1."""
        if offset < self._floor:
            self._go_back(offset)
        self._floor = offset
        heap = self._heap
        while heap[0][0] < offset:
            _, i = heap[0]
            self._since[i] = offset
            heapq.heapreplace(heap, (self._find(i, offset), i))
        best = heap[0][0]
        return -1 if best == _NOWHERE else best
