"""Which descriptors share one open file description (struct file).

Descriptors can only share a struct file if they refer to the same inode
through the same mount with the same access mode (none of which a struct
file ever changes), so kcmp is asked only inside those groups (see
_partition: about one kcmp per descriptor, and a sort of one descriptor per
open file by kcmp's order).
"""

from __future__ import annotations

import errno
import functools
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from kpeek.sources.kcmp import KcmpUnavailable, compare_files
from kpeek.sources.proc_files import RawDescriptor

Comparator = Callable[[int, int, int, int], int]


def group_open_files(
    descriptors: Sequence[RawDescriptor],
    compare: Comparator = compare_files,
    parents: Mapping[int, int] | None = None,
) -> list[list[RawDescriptor]]:
    """Partition descriptors into open files; each inner list shares one struct file.

    ``parents`` (tgid -> parent's tgid) only guides which descriptors kcmp
    is asked about first. Raises KcmpUnavailable when kcmp cannot be used
    (the caller then says sharing is unknown rather than guessing it).
    """
    candidates: dict[tuple[str, int, int | None], list[RawDescriptor]] = defaultdict(list)
    accmode = os.O_ACCMODE
    for d in descriptors:
        candidates[(d.inode_id, d.flags & accmode, d.mnt_id)].append(d)
    groups: list[list[RawDescriptor]] = []
    for members in candidates.values():
        if len(members) == 1:
            groups.append(members)
        else:
            groups.extend(_partition(members, compare, parents or {}))
    return groups


def _partition(
    members: list[RawDescriptor], compare: Comparator, parents: Mapping[int, int]
) -> list[list[RawDescriptor]]:
    """Open files among descriptors of one inode, mount and access mode, by kcmp alone.

    One pass, process by process, tries each descriptor against at most
    three groups: the latest of its own process (what dup made), the one of
    its parent's descriptor with its number (what fork passed on keeps its
    number), and the latest with its number (a sibling's, when the parent
    closed it), and starts a group of its own when none shares: about one
    kcmp per descriptor however many share one open file. The groups' first
    members are then sorted by kcmp, and groups kcmp found equal on the way
    are merged, so that groups of one open file that the pass kept apart are
    one and distinct ones are known distinct: k log k for k open files (kcmp
    gives an order, no key to hash), not n log n for n descriptors.
    """

    def same(group: list[RawDescriptor], tgid: int, fd: int) -> bool:
        a = group[0]
        try:
            return compare(a[0], a[1], tgid, fd) == 0  # (tgid, fd) of its first
        except KcmpUnavailable:
            raise
        except OSError as e:
            # A descriptor closed since we listed it: it shares with nothing.
            if e.errno not in (errno.EBADF, errno.ESRCH):
                raise
            return False

    groups: list[list[RawDescriptor]] = []
    own: dict[int, list[RawDescriptor]] = {}  # tgid -> its latest group
    at: dict[tuple[int, int], list[RawDescriptor]] = {}  # (tgid, fd) -> its group
    by_fd: dict[int, list[RawDescriptor]] = {}  # fd number -> latest group with it
    parent_of = parents.get
    # Where every process opened the file itself (/dev/null in each fork), the
    # sibling never shares: after 8 misses in a row only every 2nd, then 4th... (at
    # most 64th) descriptor asks, until one shares. What is not asked is
    # still found by the sort.
    misses, stride, chances = 0, 1, 0
    # By (tgid, fd): a RawDescriptor is a tuple that starts with them, and
    # one process's (tgid, fd) is never another's, so tuples compare in C.
    for d in sorted(members):
        tgid, fd = d[0], d[1]
        mine = own.get(tgid)
        forked = at.get((parent_of(tgid, 0), fd))
        if mine is not None and same(mine, tgid, fd):
            group = mine
        elif forked is not None and forked is not mine and same(forked, tgid, fd):
            group = forked
        else:
            group = None
            sibling = by_fd.get(fd)
            if sibling is None or sibling is mine or sibling is forked:
                pass
            elif (chances := chances + 1) % stride:
                pass  # not asked this time
            elif same(sibling, tgid, fd):
                group = sibling
                misses, stride = 0, 1
            else:
                misses += 1
                if misses % 8 == 0:
                    stride = min(stride * 2, 64)
        if group is None:
            group = [d]
            groups.append(group)
        else:
            group.append(d)
        own[tgid] = by_fd[fd] = at[(tgid, fd)] = group
    return groups if len(groups) == 1 else _merge_by_order(groups, compare)


def _merge_by_order(
    groups: list[list[RawDescriptor]], compare: Comparator
) -> list[list[RawDescriptor]]:
    """``groups`` in kcmp's order of their first members, those of one open
    file merged.

    Every kcmp answer "equal" joins two groups (union-find). A sort must have
    compared each pair it leaves adjacent, directly or through members equal
    to both, so every pair of equal groups is joined without asking again.
    """
    parent = list(range(len(groups)))
    # Each comparison is one kcmp (k log k of them): the first members' pids
    # and fds by index, nothing else looked up on the way.
    pids = [g[0].tgid for g in groups]
    fds = [g[0].fd for g in groups]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def order(i: int, j: int) -> int:
        try:
            r = compare(pids[i], fds[i], pids[j], fds[j])
        except KcmpUnavailable:
            raise
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ESRCH):
                raise
            return -1 if (pids[i], fds[i]) < (pids[j], fds[j]) else 1
        if r == 0:
            parent[root(i)] = root(j)
        return r

    merged: dict[int, list[RawDescriptor]] = {}
    for i in sorted(range(len(groups)), key=functools.cmp_to_key(order)):
        r = root(i)
        if r in merged:
            merged[r].extend(groups[i])
        else:
            merged[r] = groups[i]
    return list(merged.values())
