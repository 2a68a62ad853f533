"""A tiny FUSE file system for doctor's tests: writes that block on purpose.

Run as ``python fuse_test_server.py MOUNTPOINT MODE GATE_FD [single]``
(root; ``single`` serves with one thread). The
mount holds two regular files, ``a`` and ``b``, kept in memory.

MODE ``block``: every write from outside the server blocks in the handler
until the test writes a byte into the gate pipe (or closes it), so the
writer sleeps in request_wait_answer holding the file's i_rwsem.

MODE ``cross``: the first write into ``a`` and the first into ``b`` from
outside the server meet at a barrier; then each handler writes into the
*other* file of this same mount. Each of those writes needs the i_rwsem
that the other client holds while it waits for this server: a real kernel
deadlock, undone only by aborting the connection.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations, fuse_get_context

FILES = ("a", "b")


class BlockingFS(Operations):
    def __init__(self, mountpoint: str, mode: str, gate_fd: int) -> None:
        self.mountpoint = mountpoint
        self.mode = mode
        self.gate_fd = gate_fd
        self.data = {name: b"" for name in FILES}
        self.data_lock = threading.Lock()
        self.barrier = threading.Barrier(2)
        self.crossed: set[str] = set()
        self.now = time.time()

    def _name(self, path: str) -> str:
        name = path.lstrip("/")
        if name not in self.data:
            raise FuseOSError(errno.ENOENT)
        return name

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
                    "st_atime": self.now, "st_mtime": self.now, "st_ctime": self.now}
        name = self._name(path)
        return {"st_mode": stat.S_IFREG | 0o666, "st_nlink": 1, "st_size": len(self.data[name]),
                "st_atime": self.now, "st_mtime": self.now, "st_ctime": self.now}

    def readdir(self, path, fh):
        return [".", "..", *FILES]

    def open(self, path, flags):
        self._name(path)
        return 0

    def read(self, path, size, offset, fh):
        return self.data[self._name(path)][offset : offset + size]

    def truncate(self, path, length, fh=None):
        name = self._name(path)
        with self.data_lock:
            self.data[name] = self.data[name][:length].ljust(length, b"\0")

    def _from_self(self) -> bool:
        pid = fuse_get_context()[2]  # the requesting thread's id
        return os.path.exists(f"/proc/{os.getpid()}/task/{pid}")

    def write(self, path, buf, offset, fh):
        name = self._name(path)
        if not self._from_self():
            if self.mode == "block":
                os.read(self.gate_fd, 1)  # the test opens the gate (or closes it)
            elif self.mode == "cross" and name not in self.crossed:
                self.crossed.add(name)
                self.barrier.wait()  # both outside writers now hold their i_rwsem
                other = "b" if name == "a" else "a"
                fd = os.open(os.path.join(self.mountpoint, other), os.O_WRONLY)
                try:
                    os.write(fd, b"cross")
                finally:
                    os.close(fd)
        with self.data_lock:
            old = self.data[name]
            self.data[name] = old[:offset].ljust(offset, b"\0") + buf + old[offset + len(buf) :]
        return len(buf)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0


def main() -> None:
    mountpoint, mode, gate_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    single = sys.argv[4:] == ["single"]  # one thread: a blocked handler blocks everything
    # Long entry/attr timeouts: a path walk must not send a LOOKUP that queues
    # behind the blocked write (libfuse2 locks the path) when a slow machine
    # (a TCG guest) lets the default 1 s entries expire mid-scenario.
    FUSE(BlockingFS(mountpoint, mode, gate_fd), mountpoint, foreground=True,
         nothreads=single, fsname="kpeektest", direct_io=True,
         entry_timeout=600, attr_timeout=600)


if __name__ == "__main__":
    main()
