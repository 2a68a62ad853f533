"""Standard output that fails as one line: closed, full, or a reader that went away.

``guard_stdout()`` wraps ``sys.stdout`` so that a write error surfaces as
``OutputClosed`` (the reader closed the pipe: ``kpeek ps | head -1``) or
``OutputError`` (closed descriptor, full disk). Neither is an ``OSError``, so
no library in between (rich turns a BrokenPipeError into ``exit 1``) and no
``except OSError`` meant for kernel reads can swallow or misreport them.
"""

from __future__ import annotations

import errno
import os
import sys

from kpeek.errors import EXIT_USAGE, KpeekError

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any, TextIO

# What a shell reports for a process killed by SIGPIPE (128 + 13); the
# convention of `yes | head -1`, and never 1, which means "found a problem".
EXIT_PIPE = 141


class OutputClosed(Exception):
    """The reading end of stdout went away: stop quietly."""


class OutputError(KpeekError):
    """stdout cannot take the output (closed, disk full): one line, exit 2."""

    exit_code = EXIT_USAGE


def _fail(e: OSError) -> Exception:
    if e.errno == errno.EPIPE:
        return OutputClosed()
    return OutputError(f"cannot write the output: {e.strerror or e}")


class _Guarded:
    """A text stream whose write errors are OutputClosed or OutputError."""

    def __init__(self, inner: TextIO | Any) -> None:
        self._inner = inner

    def write(self, s: Any) -> int:
        try:
            return self._inner.write(s)
        except OSError as e:
            raise _fail(e) from None

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except OSError as e:
            raise _fail(e) from None

    @property
    def buffer(self) -> Any:
        inner = getattr(self._inner, "buffer", None)
        return _Guarded(inner) if inner is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Closed:
    """Stands in for a stdout that was closed before kpeek started."""

    def write(self, s: Any) -> int:
        raise OutputError("cannot write the output: standard output is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OutputError("cannot write the output: standard output is closed")

    encoding = "utf-8"
    errors = "surrogateescape"


def _hold_fd(fd: int) -> bool:
    """Put /dev/null on a closed standard fd, so a later open() cannot land there
    and receive our output. True if the fd was closed."""
    try:
        os.fstat(fd)
        return False
    except OSError:
        pass
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)
    return True


def guard_stdout() -> None:
    """Wrap sys.stdout (and protect closed fds 0-2) for one kpeek run."""
    for fd in (0, 2):
        _hold_fd(fd)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives for the run
    if _hold_fd(1) or sys.stdout is None:
        sys.stdout = _Closed()  # type: ignore[assignment]
    elif not isinstance(sys.stdout, _Guarded):
        sys.stdout = _Guarded(sys.stdout)  # type: ignore[assignment]


def finish_stdout() -> None:
    """Flush what is left; raises OutputClosed or OutputError like a write."""
    sys.stdout.flush()


def silence_stdout() -> None:
    """After the reader went away: point fd 1 at /dev/null so the interpreter's
    own flush at exit does not print 'Exception ignored ... BrokenPipeError'."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
