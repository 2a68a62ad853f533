"""One consistent picture from a snapshot taken while the system changes.

A source reads tasks, then descriptor tables, then files: a process that
forks between the two walks has descriptors but no task, and an open file
or inode can lose its last holder. Every reference in a Snapshot must
resolve (descriptor -> process, descriptor -> open file, open file -> inode),
so what does not resolve is dropped here and counted in ``vanished`` and
said in a note.
"""

from __future__ import annotations

import dataclasses

from kpeek.model import Snapshot


def make_consistent(snap: Snapshot) -> Snapshot:
    """``snap`` with every descriptor whose process or open file is not in it
    dropped and counted; open files and inodes held only through those go too."""
    tgids = {t.tgid for t in snap.processes()}  # a process is its leader's task
    # The usual case (nothing to drop), told by the snapshot's own indexes
    # (built here once; the views use them after).
    if snap._fds_by_tgid.keys() <= tgids and snap._fds_by_file.keys() <= snap.open_files.keys():
        return snap
    kept, dropped = [], []
    for d in snap.fds:
        (kept if d.tgid in tgids and d.open_file in snap.open_files else dropped).append(d)
    if not dropped:
        return snap
    still_held = {d.open_file for d in kept}
    gone_files = {d.open_file for d in dropped} - still_held
    open_files = {k: f for k, f in snap.open_files.items() if k not in gone_files}
    still_used = {f.inode for f in open_files.values()}
    gone_inodes = {snap.open_files[k].inode for k in gone_files if k in snap.open_files}
    inodes = {k: i for k, i in snap.inodes.items() if k not in gone_inodes - still_used}
    note = (f"{len(dropped)} descriptors of processes that started or ended while the "
            "snapshot was taken were left out")
    return dataclasses.replace(snap, fds=tuple(kept), open_files=open_files, inodes=inodes,
                               vanished=snap.vanished + len(dropped),
                               notes=(*snap.notes, note))
