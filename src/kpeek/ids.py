"""Keyed hashes for kernel pointers and identities.

Kernel addresses are secrets (they defeat KASLR), so views show a keyed
hash instead: stable within one run, meaningless across runs. To compare
two runs, give both the same key: ``--stable-ids`` (a key kept in
``$XDG_CONFIG_HOME/kpeek/id-key``, made on first use, readable by its owner
only) or ``KPEEK_ID_KEY`` in the environment. Anyone with the key can test a
guessed address against a hash, so keep it as private as the addresses.
"""

from __future__ import annotations

import os

from kpeek.errors import NotPermitted

try:  # hashlib's own blake2b, without hashlib's OpenSSL load (2 ms of every start-up)
    from _blake2 import blake2b
except ImportError:  # not CPython
    from hashlib import blake2b

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

_RUN_KEY = os.urandom(16)
KEY_ENV = "KPEEK_ID_KEY"


def _key_from(text: str) -> bytes:
    return blake2b(text.encode(), digest_size=16).digest()


def key_file() -> Path:
    from pathlib import Path  # only for --stable-ids: pathlib costs 4 ms to import

    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "kpeek" / "id-key"


def use_stable_key() -> Path:
    """Key this run's hashes with the user's kept key (made 0600 if missing); its path."""
    global _RUN_KEY
    path = key_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(16).hex() + "\n")
    except FileExistsError:
        pass
    st = path.lstat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise NotPermitted(f"{path}: must be owned by you and private (chmod 600)")
    _RUN_KEY = _key_from(path.read_text().strip())
    return path


if os.environ.get(KEY_ENV):
    _RUN_KEY = _key_from(os.environ[KEY_ENV])


_keyed: tuple[bytes, Any] = (b"", None)  # (key, a hasher fed only the key)


def _hasher() -> Any:
    """A hasher fed only this run's key (copying it skips the key setup)."""
    global _keyed
    if _keyed[0] is not _RUN_KEY:
        _keyed = (_RUN_KEY, blake2b(key=_RUN_KEY, digest_size=16))
    return _keyed[1]


def keyed_id(*parts: object, width: int = 12) -> str:
    """A short hex id for ``parts``, keyed with this run's secret."""
    h = _hasher().copy()
    h.update(repr(parts).encode())
    return h.hexdigest()[:width]


def address_ids(kind: str) -> Callable[[int], str]:
    """``keyed_id(kind, addr)`` as a function of an int ``addr``, for a whole
    snapshot's addresses: the repr's bytes are formatted, not built from a
    tuple (half the cost)."""
    h = _hasher()
    template = b"('" + kind.encode() + b"', %d)"

    def ident(addr: int) -> str:
        c = h.copy()
        c.update(template % addr)
        return c.hexdigest()[:12]

    return ident


def file_ids() -> Callable[[int, int, str], str]:
    """``keyed_id("file", tgid, fd, inode_id)`` as a function, for the open files
    of a whole /proc snapshot: the repr's text is formatted, not built from a
    tuple. ``inode_id`` is "major:minor:ino", whose repr is itself quoted."""
    h = _hasher()

    def ident(tgid: int, fd: int, inode_id: str) -> str:
        c = h.copy()
        c.update(b"('file', %d, %d, '%b')" % (tgid, fd, inode_id.encode()))
        return c.hexdigest()[:12]

    return ident


def pointer_shower(raw: bool = False) -> Callable[[int], str]:
    """``show_pointer(addr, raw)`` as a function of an int ``addr``, for a
    whole snapshot's addresses (see address_ids)."""
    if raw:
        return "0x{:016x}".format
    ident = address_ids("ptr")  # show_pointer's keyed_id("ptr", addr)
    return lambda addr: "#" + ident(addr)


def show_pointer(addr: int | None, raw: bool = False) -> str | None:
    """A kernel pointer as the user may see it: raw hex only when asked for."""
    if addr is None:
        return None
    if raw:
        return f"0x{addr:016x}"
    h = _hasher().copy()
    h.update(b"('ptr', %d)" % addr)  # keyed_id("ptr", addr), see address_ids
    return "#" + h.hexdigest()[:12]
