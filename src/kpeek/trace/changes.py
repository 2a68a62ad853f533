"""What changed between two recorded steps, and stable names for open files.

Open-file ids in a snapshot are only meaningful inside that snapshot, so a
trace names each open file ``#N`` for its whole life: an open file of step
k is the same as one of step k-1 when a descriptor slot (pid, fd) refers to
both, with the same inode and access mode, and the syscall did not put a
new file in that slot (dup2/dup3 over an open fd). Each fd-creating syscall
is its own step, so a slot cannot be closed and reused within one step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import field

from kpeek.model import OpenFile, Snapshot
from kpeek.records import record
from kpeek.render.diagram import Marks
from kpeek.render.diagram_pipes import blocking_write_ends
from kpeek.textsafe import for_terminal
from kpeek.trace.tracer import Step


@record
class StepView:
    """A step with its open files named and its changes spelled out."""

    step: Step
    labels: dict[str, str]  # open-file id in step.snapshot -> "#N"
    changes: list[str] = field(default_factory=list)
    marks: Marks = field(default_factory=Marks)


def _mode(f: OpenFile) -> int:
    return f.flags & os.O_ACCMODE


def _name(snap: Snapshot, tgid: int) -> str:
    t = snap.task(tgid)
    return f"{tgid} ({for_terminal(t.comm)})" if t else str(tgid)


def describe(steps: Iterable[Step]) -> list[StepView]:
    """Label open files across ``steps`` and list what each step changed."""
    views: list[StepView] = []
    prev: Snapshot | None = None
    prev_labels: dict[str, str] = {}
    seen_blocking: set[tuple[int, int]] = set()
    counter = 0
    for step in steps:
        snap = step.snapshot
        labels: dict[str, str] = {}
        new_files: set[str] = set()
        for fid, f in sorted(snap.open_files.items(), key=lambda kv: _first_holder(snap, kv[0])):
            label = None
            if prev is not None:
                for d in snap.holders(fid):
                    if (d.tgid, d.fd) in step.replaced:
                        continue
                    old = _slot(prev, d.tgid, d.fd)
                    if old is None:
                        continue
                    of = prev.open_files.get(old)
                    if of is not None and of.inode == f.inode and _mode(of) == _mode(f):
                        label = prev_labels.get(old)
                        if label:
                            break
            if label is None:
                counter += 1
                label = f"#{counter}"
                new_files.add(fid)
            labels[fid] = label
        view = _changes(step, prev, prev_labels, labels, new_files)
        blocking = {(b.fd.tgid, b.fd.fd): b for b in blocking_write_ends(snap)}
        for key in sorted(blocking.keys() - seen_blocking):
            b = blocking[key]
            path = for_terminal(snap.open_files[b.fd.open_file].path)
            who = "itself" if b.self_held else ", ".join(map(str, b.readers))
            view.changes.append(
                f"{_name(snap, b.fd.tgid)}: fd {b.fd.fd}, the write end of {path},"
                f" keeps {who} from ever reading end-of-file"
            )
        seen_blocking = set(blocking)
        views.append(view)
        prev, prev_labels = snap, labels
    return views


def _first_holder(snap: Snapshot, fid: str) -> tuple[int, int]:
    holders = snap.holders(fid)
    return min(((d.tgid, d.fd) for d in holders), default=(0, 0))


def _slot(snap: Snapshot, tgid: int, fd: int) -> str | None:
    for d in snap.fds_of(tgid):
        if d.fd == fd:
            return d.open_file
    return None


def _changes(step: Step, prev: Snapshot | None, prev_labels: dict[str, str],
             labels: dict[str, str], new_files: set[str]) -> StepView:
    snap = step.snapshot
    changes: list[str] = []
    changed_fds: set[tuple[int, int]] = set()
    changed_files: set[str] = set()
    changed_procs: set[int] = set()
    if prev is None:
        return StepView(step, labels, ["the traced program, stopped before execve"],
                        Marks(file_labels=labels))

    before = {t.tgid: t for t in prev.processes()}
    after = {t.tgid: t for t in snap.processes()}
    for tgid in sorted(after.keys() - before.keys()):
        changes.append(f"new process {_name(snap, tgid)}: a copy of its parent's descriptor table")
        changed_procs.add(tgid)
    for tgid in sorted(before.keys() - after.keys()):
        changes.append(f"process {_name(prev, tgid)} is gone: its descriptors were closed")
    for tgid in sorted(after.keys() & before.keys()):
        if after[tgid].comm != before[tgid].comm:
            changes.append(
                f"process {tgid} now runs {for_terminal(after[tgid].comm)}"
                f" (was {for_terminal(before[tgid].comm)})"
            )
            changed_procs.add(tgid)
        old_slots = {d.fd: d for d in prev.fds_of(tgid)}
        new_slots = {d.fd: d for d in snap.fds_of(tgid)}
        who = _name(snap, tgid)
        for fd in sorted(old_slots.keys() - new_slots.keys()):
            label = prev_labels.get(old_slots[fd].open_file, "?")
            changes.append(f"{who}: fd {fd} closed (was {label})")
        for fd in sorted(new_slots.keys()):
            d = new_slots[fd]
            label = labels.get(d.open_file, "?")
            path = for_terminal(snap.open_files[d.open_file].path)
            old = old_slots.get(fd)
            if old is None:
                changes.append(f"{who}: fd {fd} -> {label} {path}")
                changed_fds.add((tgid, fd))
            elif prev_labels.get(old.open_file) != label:
                changes.append(
                    f"{who}: fd {fd} now -> {label} {path}"
                    f" (was {prev_labels.get(old.open_file, '?')})"
                )
                changed_fds.add((tgid, fd))
            elif old.cloexec != d.cloexec:
                state = "set" if d.cloexec else "cleared"
                changes.append(f"{who}: fd {fd} close-on-exec {state}")
                changed_fds.add((tgid, fd))

    old_by_label = {prev_labels[fid]: f for fid, f in prev.open_files.items() if fid in prev_labels}
    new_labels = set(labels.values())
    for fid in sorted(new_files, key=lambda x: labels[x]):
        f = snap.open_files[fid]
        changes.append(f"open file {labels[fid]} created: {for_terminal(f.path)}, offset {f.pos}")
        changed_files.add(fid)
    for fid, f in snap.open_files.items():
        old = old_by_label.get(labels[fid])
        if old is None or fid in new_files:
            continue
        if old.pos != f.pos:
            changes.append(f"open file {labels[fid]}: offset {old.pos} -> {f.pos}")
            changed_files.add(fid)
        if old.flags != f.flags:
            changes.append(f"open file {labels[fid]}: flags 0{old.flags:o} -> 0{f.flags:o}")
            changed_files.add(fid)
    for label in sorted(old_by_label, key=lambda x: int(x[1:])):
        if label not in new_labels:
            changes.append(f"open file {label} released: no descriptor refers to it any more")
    marks = Marks(
        changed_fds=frozenset(changed_fds),
        changed_files=frozenset(changed_files),
        changed_processes=frozenset(changed_procs),
        file_labels=labels,
    )
    return StepView(step, labels, changes, marks)


_OPENS = ("open", "openat", "openat2", "creat")


def _on_fd(step: Step, fd: int) -> bool:
    """A step that only looks at or marks close-on-exec descriptor ``fd``."""
    if not step.args or step.args[0] != str(fd):
        return False
    if step.syscall == "lseek":
        return True
    if step.syscall == "ioctl":
        return step.args[1:2] == ("FIOCLEX",)
    return step.syscall == "fcntl" and step.args[1:2] == ("F_SETFD",)


def drop_transient(steps: list[Step]) -> tuple[list[Step], int]:
    """Steps without transient close-on-exec opens, and how many were dropped.

    The dynamic loader, libc and language runtimes open a file close-on-exec
    (O_CLOEXEC, or FIOCLEX/F_SETFD right after), read it and close it at once
    (ld.so.cache, libraries, locales, modules). Such an open, its close and
    any lseek or close-on-exec marking of that fd in between are dropped when
    the thread does nothing else recorded in between. Opens without
    close-on-exec are kept: that is what a program under study usually does.
    """
    # Per thread: threads of one process open and close files concurrently.
    by_thread: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        by_thread.setdefault(s.pid, []).append(i)
    position = {i: n for ids in by_thread.values() for n, i in enumerate(ids)}
    drop: set[int] = set()
    for i, s in enumerate(steps):
        if s.syscall not in _OPENS or s.result is None or s.result < 0:
            continue
        fd = s.result
        cloexec = "O_CLOEXEC" in " ".join(s.args)
        run = [i]
        for j in by_thread[s.pid][position[i] + 1 :]:
            t = steps[j]
            run.append(j)
            if t.syscall == "close" and t.args == (str(fd),):
                if cloexec:
                    drop.update(run)
                break
            if not _on_fd(t, fd):
                break
            cloexec = cloexec or t.syscall in ("ioctl", "fcntl")
    kept = [s for i, s in enumerate(steps) if i not in drop]
    return kept, len(drop)


def changes_between(before: Snapshot, after: Snapshot) -> StepView:
    """What changed from ``before`` to ``after`` (two snapshots of one run),
    as the second view of a two-step trace; used by the live page."""

    def step(snap: Snapshot) -> Step:
        return Step(index=0, pid=0, tgid=0, comm="", syscall="refresh", args=(),
                    result=None, result_text=None, snapshot=snap)

    return describe([step(before), step(after)])[1]
