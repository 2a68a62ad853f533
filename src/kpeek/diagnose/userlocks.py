"""Who holds a glibc lock that a thread sleeps on in futex(2).

A plain futex records no owner, but glibc's locks keep their holder's tid
beside the futex word, in their own layout (x86-64, glibc 2.25+):

* ``pthread_mutex_t``: ``__lock`` (the futex word: 1 locked, 2 locked with
  waiters), ``__count``, ``__owner`` (the holder's tid), for every kind of
  mutex;
* ``pthread_rwlock_t``: ``__readers`` (the phase bits and a reader count),
  ``__writers``, ``__wrphase_futex`` (readers wait here while a writer
  holds the lock), ``__writers_futex`` (writers wait here), two pads,
  ``__cur_writer`` (the tid of the writer that holds it). Both futexes hold
  1 | PTHREAD_RWLOCK_FUTEX_USED = 3 while a waiter sleeps behind a writer.
  A lock held for reading names no reader: no owner is known then.

The futex address alone does not say which field it is: each layout that
could put it there is read and checked against what glibc keeps (the
phase bits, the word's value); what is found is inferred, never certain.
"""

from __future__ import annotations

import struct

from kpeek.diagnose.procinfo import read_user
from kpeek.model import Task
from kpeek.records import record

MUTEX_LOCKED = (1, 2)  # glibc lowlevellock: locked, locked with waiters
MUTEX_OWNER_OFFSET = 8  # struct __pthread_mutex_s: __lock, __count, __owner
RWLOCK_WAITING = 3  # 1 | PTHREAD_RWLOCK_FUTEX_USED: a waiter sleeps behind a writer
RWLOCK_WRPHASE, RWLOCK_WRLOCKED = 1, 2  # __readers' phase bits
# __readers, __writers, __wrphase_futex, __writers_futex, __pad3, __pad4, __cur_writer
_RWLOCK = struct.Struct("<6Ii")
# Where a waiter's futex lies in the rwlock (offset, field number in
# _RWLOCK), and which side it waits as: readers need the write phase.
_RWLOCK_FUTEXES = ((8, 2, "read"), (12, 3, "write"))


@record(frozen=True)
class UserLock:
    """A lock found around a futex word: its kind ("a pthread mutex"), the
    holder's tid as the lock records it, the field that says so, and
    whether its holder may wait on it itself (a relocked mutex)."""

    kind: str
    holder_tid: int
    field: str
    relockable: bool


def user_lock(task: Task, uaddr: int, word: int) -> UserLock | None:
    """The glibc lock whose futex at ``uaddr`` (holding ``word``) ``task``
    sleeps on, with a holder recorded; None when none is found."""
    if word in MUTEX_LOCKED:
        tid = _int_at(task, uaddr + MUTEX_OWNER_OFFSET)
        if tid > 0:
            return UserLock("a pthread mutex", tid, "the mutex's __owner field", True)
        return None
    if word != RWLOCK_WAITING:
        return None
    # Read apart: a lock at the start of a page has nothing mapped before it.
    for offset, field, side in _RWLOCK_FUTEXES:
        raw = read_user(task, uaddr - offset, _RWLOCK.size) if uaddr > offset else None
        if raw is None:
            continue
        fields = _RWLOCK.unpack(raw)
        readers, writer = fields[0], fields[-1]
        held = readers & RWLOCK_WRLOCKED and (side == "write" or readers & RWLOCK_WRPHASE)
        if fields[field] == word and held and writer > 0:
            return UserLock(f"a pthread rwlock, waited for to {side}", writer,
                            "the rwlock's __cur_writer field", False)
    return None


def _int_at(task: Task, address: int) -> int:
    raw = read_user(task, address, 4)
    return int.from_bytes(raw, "little", signed=True) if raw else 0
