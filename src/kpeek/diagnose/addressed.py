"""Waits whose system call names a unix socket address instead of a peer.

``connect`` to a unix stream or seqpacket listener sleeps while the
listener's backlog is full: only an ``accept`` by a holder of the listening
socket makes room. ``sendto``/``sendmsg`` with a destination, on an
unconnected datagram socket, sleeps while the receiver's queue is full:
only a holder of the receiving socket drains it. Either way the wakers are
the holders of the socket bound to that address, which the address in the
caller's memory names:

* an abstract name (``@name``) within the caller socket's network namespace,
  as /proc/net/unix prints it;
* a path: the file it names, resolved in the caller's root and working
  directory, compared by device and inode with the file each socket is
  bound to as sock_diag reports it (UNIX_DIAG_VFS): so a relative name, a
  symlink, another mount of the same directory, and a name with a newline
  (which /proc/net/unix prints raw) all match.
"""

from __future__ import annotations

import os
import struct

from kpeek.diagnose.ends import Ends, Wake, by_process
from kpeek.diagnose.fdindex import socket_inode
from kpeek.diagnose.procinfo import read_user
from kpeek.model import Task
from kpeek.sources.sockets import unix_bound_files

AF_UNIX = 1
SUN_LEN = 110  # sizeof(struct sockaddr_un)
_MSG_NAME = struct.Struct("=QI")  # struct msghdr: msg_name, msg_namelen


def destination(t: Task, name: str, args: list[int]) -> tuple[int, int, int] | None:
    """(fd, address, address length) a connect/sendto/sendmsg names; None
    when it names none (a send on a connected socket)."""
    fd = args[0] & 0xFFFFFFFF
    if name == "connect":
        return fd, args[1], args[2] & 0xFFFFFFFF
    if name == "sendto" and args[4]:
        return fd, args[4], args[5] & 0xFFFFFFFF
    if name == "sendmsg":
        header = read_user(t, args[1], _MSG_NAME.size)
        if header is not None:
            address, length = _MSG_NAME.unpack(header)
            if address:
                return fd, address, length
    return None


def unix_name(t: Task, address: int, length: int) -> str | None:
    """The unix address at ``address`` in ``t``'s memory as /proc/net/unix
    prints it (abstract names with "@" for each NUL), or None if it is not one."""
    length = min(length, SUN_LEN)
    raw = read_user(t, address, length) if length > 2 else None
    if raw is None or int.from_bytes(raw[:2], "little") != AF_UNIX:
        return None
    path = raw[2:]
    if path[:1] == b"\0":
        return "@" + path[1:].replace(b"\0", b"@").decode(errors="replace")
    return path.split(b"\0", 1)[0].decode(errors="surrogateescape") or None


def _bound_file(tgid: int, path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino & 0xFFFFFFFF) of ``path`` as process ``tgid`` sees it
    (sock_diag gives a bound file's inode number in 32 bits)."""
    if not path.startswith("/"):
        try:
            path = os.path.join(os.readlink(f"/proc/{tgid}/cwd"), path)
        except OSError:
            return None
    try:
        st = os.stat(f"/proc/{tgid}/root{path}")
    except OSError:
        return None
    return st.st_dev, st.st_ino & 0xFFFFFFFF


def addressed_wake(ends: Ends, t: Task, name: str, args: list[int]) -> Wake | None:
    """The wakers of a connect or an addressed send; None when the call names
    no unix address, or no socket we see is bound to it (then nothing is said)."""
    dest = destination(t, name, args)
    if dest is None:
        return None
    fd, address, length = dest
    f = ends.file(t.tgid, fd)
    ino = socket_inode(f) if f is not None else None
    sockets = ends.sockets()
    mine = sockets.get(ino) if ino is not None else None
    if mine is None or mine.family != "unix":
        return None
    bound = unix_name(t, address, length)
    if bound is None:
        return None
    connecting = name == "connect"
    want, files = None, {}
    if not bound.startswith("@"):
        want = _bound_file(t.tgid, bound)
        files = unix_bound_files(t.tgid)
    bound_to: list[int] = []  # the inode numbers of the sockets bound to the address
    for s in sockets.values():
        if s.family != "unix" or not s.path or s.inode == mine.inode \
                or (s.state == "LISTEN") != connecting:
            continue
        if bound.startswith("@"):
            if s.path != bound or s.netns != mine.netns:
                continue
        elif want is None or files.get(s.inode) != want:
            continue
        bound_to.append(s.inode)
    holders = by_process(d for ino in bound_to for d in ends.index.socket_holders(ino))
    if not holders:
        return None
    room = "the backlog of" if connecting else "the queue of"
    return Wake(f"room in {room} {bound} ({name} on {f.path}, fd {fd})",
                "the listening socket" if connecting else "the receiving socket",
                holders, None, "socket")
