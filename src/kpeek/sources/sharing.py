"""Which descriptors share one open file description (struct file).

Descriptors can only share a struct file if they refer to the same inode
with the same access mode, so kcmp is asked only inside those groups (see
_partition: about one kcmp per descriptor, and a sort of one descriptor per
open file by kcmp's consistent order).
"""

from __future__ import annotations

import errno
import functools
import os
from collections import defaultdict
from collections.abc import Callable, Sequence

from kpeek.sources.kcmp import KcmpUnavailable, compare_files
from kpeek.sources.proc_files import RawDescriptor

Comparator = Callable[[int, int, int, int], int]


def group_open_files(
    descriptors: Sequence[RawDescriptor], compare: Comparator = compare_files
) -> list[list[RawDescriptor]]:
    """Partition descriptors into open files; each inner list shares one struct file.

    Raises KcmpUnavailable when kcmp cannot be used (the caller then says
    sharing is unknown rather than guessing it).
    """
    candidates: dict[tuple[str, int], list[RawDescriptor]] = defaultdict(list)
    for d in descriptors:
        candidates[(d.inode_id, d.flags & os.O_ACCMODE)].append(d)
    groups: list[list[RawDescriptor]] = []
    for members in candidates.values():
        if len(members) == 1:
            groups.append(members)
        else:
            groups.extend(_partition(members, compare))
    return groups


# How many of the latest groups a descriptor is compared with before it
# starts one of its own.
_RECENT = 3


def _partition(members: list[RawDescriptor], compare: Comparator) -> list[list[RawDescriptor]]:
    """Open files among descriptors of one inode and access mode, by kcmp alone.

    One pass, process by process, puts each descriptor in one of the latest
    groups whose first member kcmp says it shares with (what dup made is in
    the same process; what fork passed on, in the next one), or starts a
    group: about one kcmp per descriptor however many share one open
    file. Only the groups' first members are then sorted by kcmp, so that
    groups of one open file that the pass kept apart are merged and distinct
    ones are known distinct: k log k for k open files, not n log n for n
    descriptors (20,000 descriptors of one open file: 20,000 kcmp calls).
    """

    def same(a: RawDescriptor, b: RawDescriptor) -> bool:
        try:
            return compare(a.tgid, a.fd, b.tgid, b.fd) == 0
        except KcmpUnavailable:
            raise
        except OSError as e:
            # A descriptor closed since we listed it: it shares with nothing.
            if e.errno not in (errno.EBADF, errno.ESRCH):
                raise
            return False

    def order(a: list[RawDescriptor], b: list[RawDescriptor]) -> int:
        x, y = a[0], b[0]
        try:
            return compare(x.tgid, x.fd, y.tgid, y.fd)
        except KcmpUnavailable:
            raise
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ESRCH):
                raise
            return -1 if (x.tgid, x.fd) < (y.tgid, y.fd) else 1

    groups: list[list[RawDescriptor]] = []
    recent: list[list[RawDescriptor]] = []  # latest used first
    for d in sorted(members, key=lambda d: (d.pos, d.flags, d.tgid, d.fd)):
        for at, group in enumerate(recent):
            if same(group[0], d):
                group.append(d)
                if at:
                    recent.insert(0, recent.pop(at))
                break
        else:
            groups.append([d])
            recent.insert(0, groups[-1])
            del recent[_RECENT:]
    if len(groups) == 1:
        return groups
    merged: list[list[RawDescriptor]] = []
    for group in sorted(groups, key=functools.cmp_to_key(order)):
        if merged and order(merged[-1], group) == 0:
            merged[-1].extend(group)
        else:
            merged.append(group)
    return merged
