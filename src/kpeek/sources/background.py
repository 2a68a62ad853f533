"""Reads that run in a thread beside a snapshot's own walk.

A read of /proc or of a BPF iterator holds no GIL while the kernel formats
it, so on a machine with two CPUs one walk's system calls overlap another's
decoding. The code a background thread runs must import nothing of its own:
two threads importing at once see each other's modules half made (a
dataclass made in one while the other imports typing: 22 of 100 kpeek files
runs died so under churn), so whoever starts one imports what it needs first.
"""

from __future__ import annotations

import sys
import threading

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# A thread that wants the GIL back after a read waits, by default, 5 ms
# (sys.getswitchinterval) while another decodes; 0.1 ms while readers run.
_QUICK_SWITCH = 1e-4


class Background:
    """``fn(*args)`` in a thread of its own; ``result()`` waits for it and
    raises what it raised. (concurrent.futures would import logging and
    inspect into every kpeek files.) While any Background runs the
    interpreter switches threads quickly; the last one done restores it."""

    _running = 0
    _interval = 0.0
    _lock = threading.Lock()

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = False
        with Background._lock:
            if Background._running == 0:
                Background._interval = sys.getswitchinterval()
                sys.setswitchinterval(_QUICK_SWITCH)
            Background._running += 1
        self._thread = threading.Thread(target=self._run, name="kpeek-reader", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._finish()
            raise

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as e:  # handed to result()'s caller
            self._error = e

    def _finish(self) -> None:
        with Background._lock:
            if self._done:
                return
            self._done = True
            Background._running -= 1
            if Background._running == 0:
                sys.setswitchinterval(Background._interval)

    def join(self) -> None:
        """Wait for the thread (never left reading behind a failure)."""
        self._thread.join()
        self._finish()

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value
