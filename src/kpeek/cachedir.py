"""kpeek's cache folder: ``$XDG_CACHE_HOME/kpeek`` (an absolute one), else
``~/.cache/kpeek``; for files that spare later processes work (this boot's
symbol index, the BTF the BPF objects are relocated against).

What is there is trusted only as far as its owner: a file is used when it
and the folder belong to this user, nobody else may write the folder, and
nobody else may read or write the file (they hold kernel addresses and
layouts). Files are written whole or not at all (a rename). No home, a
read-only home, any error: no cache, never a failure.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

try:  # hashlib's own blake2b, without hashlib's OpenSSL load (as ids.py)
    from _blake2 import blake2b
except ImportError:  # not CPython
    from hashlib import blake2b

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_key(*parts: bytes) -> str | None:
    """A key of this boot (its id), this kernel (release, version, machine)
    and ``parts``: what a cached file is valid for. None when the boot id
    cannot be read."""
    try:
        with open(BOOT_ID, "rb") as f:
            boot_id = f.read().strip()
    except OSError:
        return None
    u = os.uname()
    h = blake2b(digest_size=16)
    for part in (boot_id, u.release.encode(), u.version.encode(), u.machine.encode(), *parts):
        h.update(len(part).to_bytes(4, "little") + part)
    return h.hexdigest()


def cache_dir() -> str | None:
    """The folder (it may not exist yet), or None when there is no home to put
    it in (unset, relative, or missing: HOME=/nonexistent is no request to make it)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home) or not os.path.isdir(home):
            return None  # a home that does not exist is not made by kpeek
        base = os.path.join(home, ".cache")
    return os.path.join(base, "kpeek")


def private(st: os.stat_result) -> bool:
    """A file of this user's that nobody else may read or write."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def open_dir(folder: str | None, *, create: bool = False) -> int | None:
    """An fd of ``folder``, made 0700 if ``create``; None when it is None,
    missing, not this user's, or writable by others."""
    if folder is None:
        return None
    try:
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(folder, _DIR_FLAGS)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


def open_private(dir_fd: int, name: str) -> int | None:
    """A read-only fd of the file ``name`` in the folder, if it is :func:`private`."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    if not private(os.fstat(fd)):
        os.close(fd)
        return None
    return fd


def replace(folder: str, dir_fd: int, name: str, write: Callable[[str], bool], *,
            stale_prefix: str = "") -> bool:
    """Make the file ``name`` in ``folder`` (open as ``dir_fd``) whole or not
    at all: ``write(path)`` fills an empty private temporary file there and
    says whether it did, then it is renamed over ``name``. Other files that
    start with ``stale_prefix`` and were made before this boot are removed
    (this boot's stay: two kpeek installations, each with its own BPF
    object, would otherwise remove each other's on every run). False on
    any error."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        os.close(fd)
        if not write(os.path.join(folder, tmp)):
            raise OSError("not written")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        return False
    if stale_prefix:
        booted = _boot_time()
        for entry in os.listdir(dir_fd):
            if entry.startswith(stale_prefix) and entry != name:
                with contextlib.suppress(OSError):
                    if os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mtime < booted:
                        os.unlink(entry, dir_fd=dir_fd)
    return True


def _boot_time() -> float:
    """When this boot began, in seconds since the epoch (/proc/stat's btime);
    0 when unknown (nothing is then taken as another boot's)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0
