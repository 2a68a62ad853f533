"""doctor on real fanotify permission waits: a process opening a file that
a listener watches with FAN_OPEN_PERM sleeps in D state until the listener
answers. doctor names the listener whose mark covers the file (inode marks,
mount marks), not a listener of other files nor a mere notification group;
a stopped listener is the root, with its fix. Both sources."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from fuse_scenarios import _die_with_parent, reap, state, wait_for
from wait_scenarios import diagnosis_on, stopped

PY = sys.executable

# argv: CLASS (content|notif) WHAT (inode|mount) PATH; prints "ready", never answers.
LISTENER = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
klass, what, path = sys.argv[1:4]
FAN_CLASS_NOTIF, FAN_CLASS_CONTENT, FAN_CLOEXEC = 0x0, 0x4, 0x1
FAN_MARK_ADD, FAN_MARK_MOUNT = 0x1, 0x10
FAN_OPEN, FAN_OPEN_PERM = 0x20, 0x10000
content = klass == "content"
fd = libc.fanotify_init((FAN_CLASS_CONTENT if content else FAN_CLASS_NOTIF) | FAN_CLOEXEC,
                        os.O_RDONLY)
flags = FAN_MARK_ADD | (FAN_MARK_MOUNT if what == "mount" else 0)
mask = FAN_OPEN_PERM if content else FAN_OPEN
if fd < 0 or libc.fanotify_mark(fd, flags, ctypes.c_uint64(mask), -100, path.encode()) != 0:
    sys.exit(f"fanotify: {os.strerror(ctypes.get_errno())}")
print("ready", flush=True)
time.sleep(3600)
'''


def listen(procs, klass: str, what: str, path) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", LISTENER, klass, what, str(path)], stdout=subprocess.PIPE,
                         text=True, preexec_fn=_die_with_parent)
    procs.insert(0, p)
    assert p.stdout.readline() == "ready\n"
    return p


def open_in_background(procs, path) -> subprocess.Popen:
    p = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL,
                         preexec_fn=_die_with_parent)
    procs.append(p)
    wait_for(lambda: state(p.pid) == "D", 15, "the opener in D state", about=[p])
    return p


def edges_of(source: str, opener: int) -> tuple[set, object]:
    diag = diagnosis_on(source)
    edges = {(e.holder, e.kind, e.certain) for e in diag.graph.edges
             if e.waiter == f"task:{opener}"}
    return edges, diag


@pytest.mark.timeout(60)
def test_the_listener_whose_inode_mark_covers_the_file(procs, doctor_source, tmp_path):
    watched, other = tmp_path / "watched", tmp_path / "other"
    watched.write_text("x")
    other.write_text("y")
    listener = listen(procs, "content", "inode", watched)
    listen(procs, "content", "inode", other)  # a listener of another file
    listen(procs, "notif", "inode", watched)  # told of opens, never asked
    opener = open_in_background(procs, watched)
    edges, diag = edges_of(doctor_source, opener.pid)
    assert edges == {(f"proc:{listener.pid}", "fanotify", True)}
    with stopped(listener.pid) as fix:
        _, diag = edges_of(doctor_source, opener.pid)
        [hung] = [h for h in diag.hung if h.task.pid == opener.pid]
        assert hung.stuck and f"pid {listener.pid}" in hung.root and fix in hung.fix


@pytest.mark.timeout(60)
def test_the_listener_of_the_mount(procs, doctor_source, tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "kpeek-fanotify", str(mount)], check=True)
    try:
        (mount / "file").write_text("x")
        listener = listen(procs, "content", "mount", mount)
        other = tmp_path / "elsewhere"
        other.write_text("y")
        listen(procs, "content", "inode", other)
        opener = open_in_background(procs, mount / "file")
        edges, _ = edges_of(doctor_source, opener.pid)
        assert edges == {(f"proc:{listener.pid}", "fanotify", True)}
    finally:
        reap(procs)
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(mount)], check=True)
