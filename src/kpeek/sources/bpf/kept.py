"""Kept BPF programs: loaded and verified once, pinned in bpffs, reused by
later kpeek processes without libbpf, BTF parsing or the verifier.

After a normal libbpf load (libbpf.py), :func:`publish` pins every program
and map of the object in ``/sys/fs/bpf/kpeek/<key>``, where the key names
the object, its sha256 (objects.json), the kernel release, the boot id and
kpeek's version: pins are never used across kernels, boots or kpeek
versions, and publishing one key removes every other. A later process
(:func:`open_kept`) gets the pinned fds with BPF_OBJ_GET, checks them with
BPF_OBJ_GET_INFO_BY_FD and makes its own iterator links.

Only the snapshot object is kept (KEPT): the memory reader is loaded by
each process, as before. Trust: used only by root with CAP_BPF and CAP_PERFMON (what loading needs;
pins answer to file permissions alone), when /sys/fs/bpf is a bpffs, and
when the kpeek directory, the key directory and every pin in it belong to
root and are writable by root alone; each program must be an iterator
(tracing) program of the pinned name whose maps are the pinned maps. Anything else is ignored
(one note on stderr when something looks tampered with) and the object is
loaded as usual. ``KPEEK_KEEP_BPF=0`` turns keeping off;
``kpeek sources --forget-kept`` removes the pins.

Sharing: the programs' globals (.bss) and filter maps are now those of every
kpeek process: a run holds an flock on the key directory (:meth:`KeptObject.
acquire`, waited for at most LOCK_WAIT seconds; callers then load a private
object instead, see loaded.exclusive).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import sys
import threading
from collections.abc import Iterator

from kpeek import __version__
from kpeek.errors import NotSupported
from kpeek.sources.bpf import bpfsys
from kpeek.sources.bpf.bpfsys import BpfIterator, MapAccess, MapInfo, ProgInfo

ROOT = "/sys/fs/bpf"
HOME = f"{ROOT}/kpeek"
BPF_FS_MAGIC = 0xCAFE4A11
LOCK_WAIT = 3.0  # seconds a run waits for another process's run on the kept object
PROG, MAP = "p-", "m-"  # pin name prefixes
_TMP = "tmp-"
# Only the snapshot programs (tasks, descriptors, mapped files) are kept.
# The reader reads any kernel address it is given: a pin of it would lend
# that to any uid-0 process that can open the pin, capabilities or not.
KEPT = ("snapshot",)
_MANIFEST = os.path.join(os.path.dirname(__file__), "objects.json")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# How this process got each object: "kept in PATH", or "loaded: WHY" (kpeek
# sources says it).
status: dict[str, str] = {}
_noted = False


class Busy(Exception):
    """Another kpeek process held the kpeek directory for LOCK_WAIT seconds."""


class Untrusted(Exception):
    """A key directory (or a pin in it) that must not be used."""


def why_not() -> str | None:
    """Why programs are not kept here, or None when they may be."""
    if os.environ.get("KPEEK_KEEP_BPF", "1") == "0":
        return "KPEEK_KEEP_BPF=0"
    if os.geteuid() != 0:
        return "not root"
    if not _may_load_bpf():
        return "no CAP_BPF and CAP_PERFMON"
    if bpfsys.SYS_BPF is None:
        return f"bpf(2) on {os.uname().machine} is not known to kpeek"
    if _fs_type(ROOT) != BPF_FS_MAGIC:
        return f"no bpffs mounted at {ROOT} (mount -t bpf bpf {ROOT})"
    return None


def _may_load_bpf() -> bool:
    """Whether this process could load the programs itself (CAP_BPF and
    CAP_PERFMON, or CAP_SYS_ADMIN). Pins answer to file permissions alone:
    root stripped of them could use kept programs, which kpeek must not do."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    admin, perfmon, bpf = (eff >> 21 & 1, eff >> 38 & 1, eff >> 39 & 1)
    return bool((bpf or admin) and (perfmon or admin))


def _fs_type(path: str) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is the first word
    if bpfsys.libc.statfs(os.fsencode(path), buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _manifest_sha() -> dict[str, str]:
    """The sha256 of each shipped object, as objects.json records it.

    Read without the json module (a few ms of every start-up that only
    needs this): build.py writes the file with sorted keys, one per line,
    ``"name": {`` then its ``"object": "<hex>"`` line."""
    try:
        with open(_MANIFEST, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, ValueError):
        return {}
    found: dict[str, str] = {}
    name = None
    for line in lines:
        if line.endswith(": {") and line.startswith('"'):
            name = line[1:].split('"', 1)[0]
        elif line.startswith('"object": "') and name:
            digest = line[len('"object": "'):].split('"', 1)[0]
            if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                found[name] = digest
    return found


def _clean(text: str) -> str:
    """A name bpffs takes: it refuses dots (EPERM: reserved for its own files)."""
    return "".join(c if c.isalnum() else "_" for c in text)


def key_names() -> dict[str, str]:
    """The key directory name of each shipped object on this kernel and boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            boot = f.read().strip()
    except OSError:
        return {}
    tail = f"{_clean(os.uname().release)}-{_clean(boot)}-{_clean(__version__)}"
    return {name: f"{name}-{sha[:24]}-{tail}" for name, sha in _manifest_sha().items()}


def _check_dir(st: os.stat_result, path: str) -> None:
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise Untrusted(f"{path} is not a directory of root's that only root may write")


class KeptObject(MapAccess):
    """A kept object: the fds of its pinned programs and maps, the interface
    of libbpf.BpfObject (map_fd, map_value_size, update, delete, set_globals,
    attach_iter). Raises Untrusted when the key directory is not fit."""

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self._fds: list[int] = []
        self.maps: dict[str, tuple[int, MapInfo]] = {}
        self.programs: dict[str, tuple[int, ProgInfo]] = {}
        self._links: list[int] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        _check_dir(os.lstat(HOME), HOME)
        self._dir, self._dir_pid = os.open(self.path, _DIR_FLAGS), os.getpid()
        self._fds.append(self._dir)
        _check_dir(os.fstat(self._dir), self.path)
        for entry in os.listdir(self._dir):
            st = os.stat(entry, dir_fd=self._dir, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                raise Untrusted(f"{self.path}/{entry} is not a pin of root's")
            if not entry.startswith((PROG, MAP)):
                raise Untrusted(f"{self.path}/{entry} is not one of kpeek's pins")
            fd = bpfsys.obj_get(f"{self.path}/{entry}")
            self._fds.append(fd)
            # Pins are named after libbpf's names, which are the kernel's
            # (cut short): a pin must hold the object its name says.
            pinned = entry[len(PROG):][: bpfsys.OBJ_NAME_LEN - 1]
            if entry.startswith(MAP):
                info = MapInfo(fd)
                if _clean(info.name) != pinned:
                    raise Untrusted(f"{self.path}/{entry} is the kernel's map {info.name!r}")
                self.maps[info.name] = (fd, info)
                continue
            prog = ProgInfo(fd)
            if prog.type != bpfsys.PROG_TYPE_TRACING or _clean(prog.name) != pinned:
                raise Untrusted(f"{self.path}/{entry} is the kernel's {prog.name!r} of "
                                f"program type {prog.type}")
            self.programs[prog.name] = (fd, prog)
        map_ids = {info.id for _fd, info in self.maps.values()}
        for what, (_fd, prog) in self.programs.items():
            if not prog.map_ids <= map_ids:
                raise Untrusted(f"{self.path}: program {what} uses maps that are not pinned")
        if not self.programs or not any(m.endswith(".bss") for m in self.maps):
            raise Untrusted(f"{self.path} lacks programs or the globals")

    def close(self) -> None:
        for fd in (*self._links, *self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links, self._fds = [], []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _map(self, suffix: str) -> tuple[int, MapInfo]:
        for what, found in self.maps.items():
            if what.endswith(suffix):
                return found
        raise NotSupported(f"BPF object {self.name} has no map {suffix}")

    def map_fd(self, suffix: str) -> int:
        return self._map(suffix)[0]

    def map_value_size(self, suffix: str) -> int:
        return self._map(suffix)[1].value_size

    def attach_iter(self, program: str, *, tid: int = 0, tgid: int = 0) -> BpfIterator:
        """A link of this process's own to the pinned ``program``."""
        found = self.programs.get(program)
        if found is None:
            raise NotSupported(f"BPF object {self.name} has no program {program}")
        try:
            link = bpfsys.link_create_iter(found[0], tid=tid, tgid=tgid)
        except OSError as e:
            raise bpfsys.failure(f"cannot attach BPF iterator {program}", e.errno) from None
        self._links.append(link)
        return BpfIterator(link, program)

    def acquire(self) -> bool:
        """Take the key directory's flock for a run; False when another
        process held it for LOCK_WAIT seconds."""
        if self._dir_pid != os.getpid():  # a forked child: an open file of its own
            try:
                self._dir, self._dir_pid = os.open(self.path, _DIR_FLAGS), os.getpid()
            except OSError:  # forgotten meanwhile: the caller loads its own
                return False
            self._fds.append(self._dir)
        return _flock(self._dir)

    def release(self) -> None:
        fcntl.flock(self._dir, fcntl.LOCK_UN)


def _flock(fd: int) -> bool:
    """flock(fd, LOCK_EX), waiting LOCK_WAIT seconds at most.

    The wait is a blocking flock (in a thread, to bound it): the kernel wakes
    it the moment the holder lets go, where polling would let a process that
    runs span after span take the lock back first, again and again.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    guard = threading.Lock()
    state = {"got": False, "gave_up": False}

    def wait() -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
            with guard:
                if state["gave_up"]:  # too late: let the others go on
                    fcntl.flock(fd, fcntl.LOCK_UN)
                else:
                    state["got"] = True

    waiter = threading.Thread(target=wait, name="kpeek-kept-lock", daemon=True)
    waiter.start()
    waiter.join(LOCK_WAIT)
    with guard:
        state["gave_up"] = not state["got"]
        return state["got"]


def _note(text: str) -> None:
    global _noted
    if not _noted:
        _noted = True
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"kpeek: note: {text}\n")


def open_kept(name: str) -> KeptObject | None:
    """The kept object ``name`` if there is a trusted one for this kernel,
    boot and kpeek; None otherwise (load it then). Never raises."""
    reason = why_not() or (None if name in KEPT else
                            "it reads any kernel address: never kept")
    if reason:
        status[name] = f"loaded: not kept here: {reason}"
        return None
    key = key_names().get(name)
    path = f"{HOME}/{key}"
    try:
        if not key or not os.path.lexists(path):
            status[name] = "loaded: none kept yet"
            return None
        obj = KeptObject(name, path)
    except (Untrusted, OSError) as e:
        if isinstance(e, OSError) and e.errno in (errno.EPERM, errno.EACCES):
            status[name] = f"loaded: kept ones refused: {os.strerror(e.errno)}"
            return None  # BPF refused to this process: the load will say so
        why = str(e) if isinstance(e, Untrusted) else f"{path}: {os.strerror(e.errno or 0)}"
        status[name] = f"loaded: kept ones not trusted: {why}"
        _note(f"kept BPF programs not used ({why}); loading them afresh "
              "(kpeek sources --forget-kept removes them)")
        return None
    status[name] = f"kept in {path}"
    return obj


def _remove_tree(path: str) -> None:
    """rm -r of a bpffs directory of pins (two levels at most)."""
    for entry in os.listdir(path):
        inner = f"{path}/{entry}"
        if stat.S_ISDIR(os.lstat(inner).st_mode):
            for pin in os.listdir(inner):
                os.unlink(f"{inner}/{pin}")
            os.rmdir(inner)
        else:
            os.unlink(inner)
    os.rmdir(path)


@contextlib.contextmanager
def _home_locked() -> Iterator[int]:
    fd = os.open(HOME, _DIR_FLAGS)
    try:
        _check_dir(os.fstat(fd), HOME)
        if not _flock(fd):
            raise Busy(HOME)
        yield fd
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def will_publish(name: str) -> bool:
    """Whether a fresh load of ``name`` is kept for later processes."""
    return name in KEPT and not why_not()


def publish(name: str, data: bytes, programs: dict[str, int], maps: dict[str, int]) -> bool:
    """Pin the freshly loaded object ``name`` (its program and map fds) for
    later processes, and remove every other key's pins. False when it was not
    kept (not wanted here, already kept, refused); never raises."""
    if not will_publish(name):
        return False
    import hashlib

    keys = key_names()
    key = keys.get(name)
    if not key or hashlib.sha256(data).hexdigest()[:24] != key.split("-")[1]:
        return False  # objects.json does not describe these bytes: keep nothing
    tmp = f"{HOME}/{_TMP}{name}-{os.getpid()}"
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(HOME, 0o700)
        with _home_locked():
            if os.path.lexists(f"{HOME}/{key}"):
                return False  # published meanwhile, or there and not trusted
            os.mkdir(tmp, 0o700)
            for prog, fd in programs.items():
                bpfsys.obj_pin(fd, f"{tmp}/{PROG}{_clean(prog)}")
            for m, fd in maps.items():
                bpfsys.obj_pin(fd, f"{tmp}/{MAP}{_clean(m)}")
            # Whole or not at all: bpffs renames (4.11+; BPF iterators need 5.8).
            os.rename(tmp, f"{HOME}/{key}")
            current = set(keys.values())
            for entry in os.listdir(HOME):
                stale = entry not in current and not (
                    entry.startswith(_TMP) and _alive(entry.rsplit("-", 1)[-1]))
                if stale:
                    _remove_tree(f"{HOME}/{entry}")
    except (OSError, Busy, Untrusted):
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                _remove_tree(tmp)
        return False
    status[name] = f"loaded: then kept in {HOME}"
    return True


def describe() -> tuple[str, str]:
    """(how, why) this process got its BPF objects, for ``kpeek sources``."""
    if status and all(s.startswith("kept in ") or n not in KEPT for n, s in status.items()):
        private = sorted(n for n in status if n not in KEPT)
        also = (f"; the {', '.join(private)} object loaded by each process (it reads any "
                "kernel address)") if private else ""
        return f"kept, pinned in {HOME} (verified once, reused without libbpf){also}", ""
    why = sorted({s.removeprefix("loaded: ") for s in status.values() if s.startswith("loaded: ")})
    return "loaded with libbpf and verified by this process", "; ".join(why)


def kept_dirs() -> list[str]:
    """The key directories under HOME now (whatever their state)."""
    try:
        return sorted(os.listdir(HOME))
    except OSError:
        return []


def remove_key_dir(name: str) -> None:
    """Remove one key directory of HOME and its pins."""
    _remove_tree(f"{HOME}/{name}")


def forget() -> list[str]:
    """Remove every kept program and map (the whole kpeek directory); the
    names of the key directories removed. Running kpeek processes keep what
    they opened. Raises OSError when bpffs refuses."""
    found = kept_dirs()
    if not os.path.lexists(HOME):
        return []
    if os.path.islink(HOME) or not os.path.isdir(HOME):
        os.unlink(HOME)
        return found
    try:
        with _home_locked():
            _remove_tree(HOME)
    except (Busy, Untrusted):  # a publisher stuck for seconds, or not root's: all the same
        _remove_tree(HOME)
    return found
