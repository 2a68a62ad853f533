"""Which descriptors share one open file description (struct file).

Descriptors can only share a struct file if they refer to the same inode
with the same access mode, so kcmp is asked only inside those small groups:
they are sorted by kcmp's consistent order and equal neighbours merged.
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


def _partition(members: list[RawDescriptor], compare: Comparator) -> list[list[RawDescriptor]]:
    def order(a: RawDescriptor, b: RawDescriptor) -> int:
        if a is b:
            return 0
        try:
            return compare(a.tgid, a.fd, b.tgid, b.fd)
        except KcmpUnavailable:
            raise
        except OSError as e:
            # A descriptor closed since we listed it: it shares with nothing.
            if e.errno not in (errno.EBADF, errno.ESRCH):
                raise
            return -1 if (a.tgid, a.fd) < (b.tgid, b.fd) else 1

    # Descriptors of one open file show the same offset and flags, so a
    # first sort on those brings them together, and Timsort, finding long
    # runs already in kcmp order, then needs about one kcmp per descriptor
    # instead of log2(n). The kcmp sort alone decides what is shared.
    hinted = sorted(members, key=lambda d: (d.pos, d.flags, d.fd, d.tgid))
    ordered = sorted(hinted, key=functools.cmp_to_key(order))
    groups = [[ordered[0]]]
    for d in ordered[1:]:
        head = groups[-1][0]
        try:
            same = compare(head.tgid, head.fd, d.tgid, d.fd) == 0
        except KcmpUnavailable:
            raise
        except OSError:
            same = False
        if same:
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups
