"""lsof's everyday selections for ``kpeek files``: -i, -u, -c, +D, paths.

Process selections (-u, -c) choose processes; file selections (-i, +D,
paths) choose rows (descriptors and cwd/rtd/txt/mem), and a process is shown
when it has a chosen row. All selections given must hold (as lsof -a).
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable

from kpeek.errors import UsageError
from kpeek.lazyre import lazy
from kpeek.model import Socket, Task
from kpeek.records import record

# lsof -i: [46][protocol][@hostname|hostaddr][:service|port[-port]]
_INET_SPEC = lazy(  # compiled by the first -i, not by every kpeek files
    r"(?P<v>[46])?(?P<proto>tcp|udp|TCP|UDP)?"
    r"(?:@(?P<host>\[[^\]]+\]|[^:@]+))?(?::(?P<port>[\w.-]+))?"
)


@record(frozen=True, slots=True)
class Row:
    """A row to select on: a descriptor's or a cwd/rtd/txt/mem file."""

    path: str
    inode: str  # "major:minor:ino", "" when unknown
    socket: Socket | None = None


RowTest = Callable[[Row], bool]


def inet_test(spec: str) -> RowTest:
    """A test for lsof's ``-i [SPEC]``: an internet socket matching SPEC."""
    m = _INET_SPEC.fullmatch(spec)
    if m is None:
        raise UsageError(f"-i {spec!r}: expected [46][tcp|udp][@host][:port[-port]]")
    family = {"4": "inet", "6": "inet6"}.get(m["v"] or "")
    proto = (m["proto"] or "").lower()
    hosts = _resolve(m["host"].strip("[]")) if m["host"] else None
    ports = _ports(m["port"], proto) if m["port"] else None

    def test(row: Row) -> bool:
        s = row.socket
        if s is None or s.family not in ("inet", "inet6"):
            return False
        if (family and s.family != family) or (proto and s.protocol != proto):
            return False
        ends = [_split(a) for a in (s.local, s.remote) if a]
        if hosts is not None and not any(h in hosts for h, _ in ends):
            return False
        return ports is None or any(p in ports for _, p in ends)

    return test


def _split(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def _resolve(host: str) -> set[str]:
    import socket  # only for -i: 3 ms to import

    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as e:
        raise UsageError(f"-i: cannot resolve {host!r}: {e.strerror or e}") from e
    return {str(info[4][0]) for info in infos}


def _ports(text: str, proto: str) -> range:
    low, sep, high = text.partition("-")
    if sep:
        if not (low.isdigit() and high.isdigit()):
            raise UsageError(f"-i: bad port range {text!r}")
        return range(int(low), int(high) + 1)
    if low.isdigit():
        return range(int(low), int(low) + 1)
    import socket

    try:
        port = socket.getservbyname(low, proto or None)  # type: ignore[arg-type]
    except OSError as e:
        raise UsageError(f"-i: unknown service {low!r}") from e
    return range(port, port + 1)


def _plain(path: str) -> str:
    return path.removesuffix(" (deleted)")


def dir_test(directory: str) -> RowTest:
    """lsof's ``+D DIR``: files at or under DIR (deleted ones too)."""
    top = os.path.realpath(directory)
    if not os.path.isdir(top):
        raise UsageError(f"+D {directory}: not a directory")
    prefix = top.rstrip("/") + "/"

    def test(row: Row) -> bool:
        path = _plain(row.path)
        return path == top or path.startswith(prefix)

    return test


def path_test(path: str) -> RowTest | None:
    """Who has ``path`` open: its inode; every file on it for a mount point; for a
    path that no longer exists, the files open under it as deleted. None if none
    of these can be."""
    full = os.path.abspath(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        deleted = full + " (deleted)"
        return lambda row: row.path == deleted
    except OSError:
        return None
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:"
    if os.path.ismount(full):
        return lambda row: row.inode.startswith(dev)
    inode = f"{dev}{st.st_ino}"
    return lambda row: row.inode == inode


def user_test(users: list[str]) -> Callable[[Task], bool]:
    """lsof's ``-u``: login names or uids, comma lists; ``^NAME`` excludes."""
    wanted: set[int] = set()
    unwanted: set[int] = set()
    for item in (u for arg in users for u in arg.split(",") if u):
        negate = item.startswith("^")
        name = item.lstrip("^")
        if name.isdigit():
            uid = int(name)
        else:
            try:
                uid = pwd.getpwnam(name).pw_uid
            except KeyError as e:
                raise UsageError(f"-u: no such user {name!r}") from e
        (unwanted if negate else wanted).add(uid)
    return lambda t: (not wanted or t.uid in wanted) and t.uid not in unwanted


def comm_test(patterns: list[str]) -> Callable[[Task], bool]:
    """lsof's ``-c``: a command that starts with the text, or ``/REGEX/``."""
    tests: list[Callable[[str], bool]] = []
    for pattern in patterns:
        if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
            try:
                rx = re.compile(pattern[1:-1])
            except re.error as e:
                raise UsageError(f"-c {pattern}: {e}") from e
            tests.append(lambda comm, rx=rx: rx.search(comm) is not None)
        else:
            tests.append(lambda comm, p=pattern: comm.startswith(p))
    return lambda t: any(test(t.comm) for test in tests)
