"""The /proc source next to FUSE file systems that stop answering."""

from __future__ import annotations

import os
import time

import pytest

from capabilities import require
from fuse_scenarios import fuse_mount, wait_for, wchan
from kpeek.sources import procfs

pytestmark = pytest.mark.timeout(60)


def _fd_of(pid: int, path: str) -> int | None:
    for name in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{name}") == path:
            return int(name)
    return None


def test_fuse_files_are_listed_without_asking_the_server():
    require("root", "fuse")
    with fuse_mount("block") as m:
        client = m.spawn(f"f = open({m.path('a')!r}, 'w'); import time; time.sleep(60)")
        wait_for(lambda: _fd_of(client.pid, m.path("a")) is not None, 15, "the client's open")
        fd = _fd_of(client.pid, m.path("a"))
        st = os.stat(m.mountpoint)
        m.abort()
        time.sleep(1.2)  # past the attribute cache: any fresh stat now fails
        snap = procfs.take_snapshot([client.pid])
        (d,) = [d for d in snap.fds_of(client.pid) if d.fd == fd]
        f = snap.open_files[d.open_file]
        assert f.path == m.path("a")
        assert f.flags & os.O_ACCMODE == os.O_WRONLY
        assert f.inode == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{snap.inodes[f.inode].ino}"
        assert snap.inodes[f.inode].type == "unknown"  # never asked of the server
        assert any("FUSE mounts not stat()ed" in n for n in snap.notes)


def test_a_file_system_that_refuses_stat_is_noted_not_fatal(monkeypatch, tmp_path):
    """What an aborted FUSE connection does to a plain stat (ECONNABORTED)."""
    import errno

    from kpeek.sources import proc_files

    path = tmp_path / "x"
    path.write_text("x")
    st = os.stat(path)
    with open(path) as f:

        def refuse(link: str | bytes) -> None:
            if os.fsdecode(os.readlink(link)) == str(path):
                raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")
            return real(link)

        real = proc_files.stat_cached
        monkeypatch.setattr(proc_files, "stat_cached", refuse)
        snap = procfs.take_snapshot([os.getpid()])
        (d,) = [d for d in snap.fds_of(os.getpid()) if d.fd == f.fileno()]
    of = snap.open_files[d.open_file]
    # The inode is still named, by its mount's device and fdinfo's ino.
    assert of.inode == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"
    assert snap.inodes[of.inode].type == "unknown"
    assert any("could not be examined" in n and "connection abort" in n for n in snap.notes)


def test_blocked_single_threaded_server_does_not_hang_a_snapshot():
    require("root", "fuse")
    with fuse_mount("block", single_thread=True) as m:
        writer = m.spawn(
            f"f = open({m.path('a')!r}, 'w'); f.write('x'); f.flush(); import time; time.sleep(60)"
        )
        wait_for(lambda: wchan(writer.pid).startswith("request_wait_answer"), 15, "the write")
        time.sleep(1.2)  # past the attribute timeout: a plain stat would ask the server
        started = time.monotonic()
        snap = procfs.take_snapshot([writer.pid], stacks=True)
        assert time.monotonic() - started < 5
        assert snap.task(writer.pid).wchan == "request_wait_answer"
        assert any(
            snap.open_files[d.open_file].path == m.path("a") for d in snap.fds_of(writer.pid)
        )
