"""Work done in a forked child while this process goes on: a second CPU,
and a GIL of its own.

Two uses. A read made of many small system calls (/proc, a few per
process): a thread does not help there, as each call hands the GIL over and
the two threads wait on each other more than they overlap (measured: a
whole-system /proc snapshot 1.9 s alone, 3.4 s beside a thread reading the
process rows). And the second half of a whole-system output, rendered in
pure Python on one CPU while the others sit idle (the snapshot's reader
threads are done by then).

The child is a fork: it sees the snapshot as it is, with nothing copied or
pickled. It writes its answer into a memfd (never blocked on a reader that
is busy with its own half), which this process reads once the child has
exited cleanly: marshal data (plain tuples, lists, dicts, strings and
numbers: fast, and nothing in it is code) or raw bytes, in pieces. A child
that failed in any way (an exception, killed, out of memory) gives None,
and the caller does the work itself: nothing the child did reaches the
output.
"""

from __future__ import annotations

import contextlib
import io
import marshal
import os
import sys

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, TextIO, TypeVar

    T = TypeVar("T")

# Below this many items (descriptors) an output is made here alone: the
# fork (a few ms for a process of some 100 MB) would cost more than the
# child saves. Tests set it to 0 to split any output.
MIN_ITEMS = 20_000
_PIECE = 1 << 20
_BATCH = 256  # items written by a child at a time (write_in_two)


class InChild:
    """``fn(*args)`` in a child forked now. Its answer is marshal data
    (:meth:`result`), or with ``raw`` the bytes of the iterable it returns
    (:meth:`pieces`); either is None when the child failed. :meth:`cancel`
    ends a child whose answer is no longer wanted: one of the three must be
    called."""

    def __init__(self, fn: Callable[..., Any], *args: Any, raw: bool = False) -> None:
        self._pid, self._fd = 0, -1
        try:
            self._fd = os.memfd_create("kpeek-child", os.MFD_CLOEXEC)
            pid = os.fork()
        except OSError:  # no memfd or no fork: result() is None, the caller works alone
            self._close()
            return
        if pid == 0:
            _child(self._fd, fn, args, raw)  # never returns
        self._pid = pid

    def result(self) -> Any | None:
        """The child's marshal answer, or None."""
        data = b"".join(self.pieces() or [b"\xff"])  # b"\xff": not marshal data
        try:
            return marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            return None

    def pieces(self) -> Iterator[bytes] | None:
        """The child's bytes in pieces of 1 MiB (never all held at once), or None."""
        if not self._pid or self._reap(kill=False) != 0:
            self._close()
            return None
        # A file object owns the memfd from here: closed when the pieces are
        # read, or when they are dropped unread (an unstarted generator runs
        # no finally clause).
        source, self._fd = open(self._fd, "rb", buffering=0), -1  # noqa: SIM115
        return _read(source, os.fstat(source.fileno()).st_size)

    def cancel(self) -> None:
        """End the child (the parent failed or stopped early) and reap it."""
        if self._pid:
            self._reap(kill=True)
        self._close()

    def _reap(self, kill: bool) -> int:
        pid, self._pid = self._pid, 0
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)  # SIGKILL (the signal module's import costs 1 ms)
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler)
            return 1

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _read(source: io.FileIO, size: int) -> Iterator[bytes]:
    with source:
        for offset in range(0, size, _PIECE):
            yield os.pread(source.fileno(), min(_PIECE, size - offset), offset)


def _child(fd: int, fn: Callable[..., Any], args: tuple, raw: bool) -> None:
    """Write fn's answer to ``fd`` and exit, 0 when all was written.
    os._exit: no exit handlers, no flush of buffers inherited from the
    parent (that would print its output twice), no cleanup of its objects."""
    code = 1
    try:
        import signal

        # The parent gets every interrupt; it ends the child if it stops early.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with open(fd, "wb", closefd=False) as out:
            if raw:
                for piece in fn(*args):
                    out.write(piece)
            else:
                out.write(marshal.dumps(fn(*args)))
        code = 0
    finally:
        os._exit(code)


def worth_forking(items: int) -> bool:
    """Whether a part of an output of ``items`` items is better made in a
    child: big enough, a second CPU to run it, and no other thread in this
    process (one might hold a lock the child would wait on forever)."""
    threading = sys.modules.get("threading")
    return (
        items >= MIN_ITEMS
        and len(os.sched_getaffinity(0)) > 1
        and (threading is None or threading.active_count() == 1)
        and os.environ.get("KPEEK_NO_FORK", "") in ("", "0")
    )


def split_point(weights: Sequence[int], share: float = 0.5) -> int:
    """How many leading items hold ``share`` of the total weight (at least one)."""
    total, split, count = sum(weights), 0, 0
    while split < len(weights) and (split == 0 or count < share * total):
        count += weights[split]
        split += 1
    return split


def write_in_two(
    out: TextIO,
    items: Sequence[T],
    weights: Sequence[int],
    write: Callable[[Sequence[T], TextIO], None],
) -> None:
    """``write(items, out)``, where worth it (:func:`worth_forking`) with
    the items after the first half of the weight written by a child into a
    buffer, and copied to ``out`` after this process wrote the first half."""
    split = split_point(weights) if worth_forking(sum(weights)) else len(items)
    if split >= len(items):
        write(items, out)
        return
    tty, encoding = out.isatty(), getattr(out, "encoding", None) or "utf-8"
    errors = getattr(out, "errors", None) or "strict"

    def text() -> Iterator[bytes]:  # in batches: never the whole text held twice
        for start in range(split, len(items), _BATCH):
            buffer = _Text(tty)
            write(items[start : start + _BATCH], buffer)
            yield buffer.getvalue().encode(encoding, errors)

    child = InChild(text, raw=True)
    try:
        write(items[:split], out)
        made = child.pieces()
    except BaseException:
        child.cancel()
        raise
    if made is None:
        write(items[split:], out)
        return
    raw = getattr(out, "buffer", None)
    if raw is not None:
        out.flush()
    for piece in made:
        if raw is not None:
            raw.write(piece)
        else:
            out.write(piece.decode(encoding, errors))


class _Text(io.StringIO):
    """A buffer that answers isatty() as the output it stands for does (text
    is styled for a terminal only)."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty
