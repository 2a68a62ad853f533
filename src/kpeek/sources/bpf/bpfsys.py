"""The bpf(2) system call through ctypes, for what kpeek does with programs
that are already loaded: get and pin objects in bpffs, read their info,
read and write map elements, attach iterator links and read iterators.

No libbpf here: a process that uses kept programs (kept.py) never loads it.
Layouts are those of ``union bpf_attr``, ``struct bpf_prog_info`` and
``struct bpf_map_info`` in <linux/bpf.h>, which only ever grow at the end.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

from kpeek.errors import NotPermitted, NotSupported

# bpf(2)'s number; the shipped objects are built for x86-64 only (build.py).
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
# enum bpf_cmd
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_PIN, OBJ_GET, OBJ_GET_INFO_BY_FD, LINK_CREATE, ITER_CREATE = 6, 7, 15, 28, 33
PROG_TYPE_TRACING = 26  # enum bpf_prog_type: iterator programs are tracing programs
TRACE_ITER = 28  # enum bpf_attach_type BPF_TRACE_ITER
OBJ_NAME_LEN = 16

libc = ctypes.CDLL(None, use_errno=True)
_syscall = libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)

_PATH_ATTR = struct.Struct("<QII")  # pathname, bpf_fd, file_flags
_ELEM_ATTR = struct.Struct("<I4xQQQ")  # map_fd, key, value (or next_key), flags
_INFO_ATTR = struct.Struct("<IIQ")  # bpf_fd, info_len, info
_LINK_ATTR = struct.Struct("<IIIIQI4x")  # prog_fd, target_fd, attach_type, flags, iter_info, len
_ITER_ATTR = struct.Struct("<II")  # link_fd, flags
_TASK_ITER_INFO = struct.Struct("<III4x")  # union bpf_iter_link_info: tid, pid, pid_fd
# struct bpf_prog_info up to its name: type, id, tag, lengths, pointers, uid,
# nr_map_ids, map_ids, name
_PROG_INFO = struct.Struct("<II8xIIQQQIIQ16s")
_MAP_INFO = struct.Struct("<IIIIII16s")  # type, id, key_size, value_size, max_entries, flags, name


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """bpf(cmd, attr): its result, or OSError with the kernel's errno."""
    if SYS_BPF is None:
        raise OSError(errno.ENOSYS, "bpf(2) on this architecture is not known to kpeek")
    ret = _syscall(SYS_BPF, cmd, attr, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(layout: struct.Struct, *values: int) -> ctypes.Array:
    buf = ctypes.create_string_buffer(layout.size)
    layout.pack_into(buf, 0, *values)
    return buf


def obj_get(path: str) -> int:
    """A new fd of the object pinned at ``path``."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(OBJ_GET, _attr(_PATH_ATTR, ctypes.addressof(name), 0, 0))


def obj_pin(fd: int, path: str) -> None:
    """Pin the object of ``fd`` at ``path`` (in a bpffs directory)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    bpf(OBJ_PIN, _attr(_PATH_ATTR, ctypes.addressof(name), fd, 0))


def _info(fd: int, size: int) -> ctypes.Array:
    info = ctypes.create_string_buffer(size)
    bpf(OBJ_GET_INFO_BY_FD, _attr(_INFO_ATTR, fd, size, ctypes.addressof(info)))
    return info


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


class ProgInfo:
    """What the kernel says of a loaded program: its type, id, name, maps."""

    def __init__(self, fd: int) -> None:
        map_ids = (ctypes.c_uint32 * 64)()
        info = ctypes.create_string_buffer(_PROG_INFO.size)
        struct.pack_into("<IQ", info, 52, len(map_ids), ctypes.addressof(map_ids))
        bpf(OBJ_GET_INFO_BY_FD, _attr(_INFO_ATTR, fd, len(info), ctypes.addressof(info)))
        fields = _PROG_INFO.unpack_from(info)
        self.type, self.id, nr_maps, self.name = fields[0], fields[1], fields[8], _name(fields[10])
        self.tag = bytes(info[8:16])  # the kernel's hash of the instructions (map fds as 0)
        self.map_ids = frozenset(map_ids[: min(nr_maps, len(map_ids))])


class MapInfo:
    """What the kernel says of a map: its type, id, sizes and name."""

    def __init__(self, fd: int) -> None:
        fields = _MAP_INFO.unpack_from(_info(fd, _MAP_INFO.size))
        self.type, self.id, self.key_size, self.value_size, self.max_entries = fields[:5]
        self.name = _name(fields[6])


def link_create_iter(prog_fd: int, *, tid: int = 0, tgid: int = 0) -> int:
    """An iterator link of ``prog_fd``, limited to one thread (``tid``) or
    one thread group (``tgid``) when given (iter/task*, kernel 6.1+)."""
    info = None
    if tid or tgid:
        info = _attr(_TASK_ITER_INFO, tid, tgid, 0)
    return bpf(LINK_CREATE, _attr(
        _LINK_ATTR, prog_fd, 0, TRACE_ITER, 0,
        ctypes.addressof(info) if info is not None else 0, len(info) if info is not None else 0,
    ))  # fmt: skip


def iter_create(link_fd: int) -> int:
    """A new iterator (a readable fd) of the iterator link ``link_fd``."""
    return bpf(ITER_CREATE, _attr(_ITER_ATTR, link_fd, 0))


def failure(what: str, err: int) -> NotSupported | NotPermitted:
    """The error to raise when the kernel refused ``what`` with ``err``."""
    if err in (errno.EPERM, errno.EACCES):
        return NotPermitted(
            f"{what}: {os.strerror(err)}; run as root (BPF iterators need CAP_BPF "
            "and CAP_PERFMON) or use --source procfs"
        )
    return NotSupported(f"{what}: {os.strerror(err)}; use --source procfs")


class MapAccess:
    """Element access to an object's maps by name suffix (".bss", "wanted");
    subclasses say where each map's fd comes from."""

    def map_fd(self, suffix: str) -> int:
        raise NotImplementedError

    def map_value_size(self, suffix: str) -> int:
        raise NotImplementedError

    def _elem(self, cmd: int, suffix: str, key: bytes, value: ctypes.Array | None) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        bpf(cmd, _attr(_ELEM_ATTR, self.map_fd(suffix), ctypes.addressof(k),
                       ctypes.addressof(value) if value is not None else 0, 0))

    def update(self, suffix: str, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` in the map named ``*suffix``; raises OSError."""
        v = ctypes.create_string_buffer(value, len(value))
        try:
            self._elem(MAP_UPDATE_ELEM, suffix, key, v)
        except OSError as e:
            raise OSError(e.errno, f"bpf_map_update_elem({suffix}): {e.strerror}") from None

    def delete(self, suffix: str, key: bytes) -> None:
        """Remove ``key`` from the map named ``*suffix``; a missing key is fine."""
        try:
            self._elem(MAP_DELETE_ELEM, suffix, key, None)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def lookup(self, suffix: str, key: bytes) -> bytes | None:
        """The value of ``key`` in the map named ``*suffix``, None if absent."""
        v = ctypes.create_string_buffer(self.map_value_size(suffix))
        try:
            self._elem(MAP_LOOKUP_ELEM, suffix, key, v)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def keys(self, suffix: str, key_size: int) -> list[bytes]:
        """Every key of the (hash) map named ``*suffix``."""
        found: list[bytes] = []
        nxt = ctypes.create_string_buffer(key_size)
        k: ctypes.Array | None = None
        fd = self.map_fd(suffix)
        while len(found) < 1 << 20:
            try:
                bpf(MAP_GET_NEXT_KEY, _attr(_ELEM_ATTR, fd, ctypes.addressof(k) if k else 0,
                                            ctypes.addressof(nxt), 0))
            except OSError as e:
                if e.errno == errno.ENOENT:
                    break
                raise
            found.append(nxt.raw)
            k = ctypes.create_string_buffer(nxt.raw, key_size)
        return found

    def set_globals(self, value: bytes) -> None:
        """Replace the whole .bss section (all zero-initialised globals)."""
        self.update(".bss", b"\0\0\0\0", value)

    def read_globals(self) -> bytes:
        """The .bss section as the programs see it now."""
        return self.lookup(".bss", b"\0\0\0\0") or b""


class BpfIterator:
    """An attached iterator link; each :meth:`run` walks the kernel objects anew."""

    def __init__(self, link_fd: int, name: str) -> None:
        self.link_fd = link_fd
        self.name = name

    def chunks(self, bufsize: int = 1 << 20) -> Iterator[bytes]:
        """The iterator's output, as the kernel hands it over (≤ 32 KiB a read)."""
        try:
            fd = iter_create(self.link_fd)
        except OSError as e:
            raise failure(f"cannot create BPF iterator {self.name}", e.errno or errno.EIO) from None
        try:
            while True:
                try:
                    chunk = os.read(fd, bufsize)
                except BlockingIOError:
                    # The kernel visited a million objects (MAX_ITER_OBJECTS)
                    # and none wrote a byte (a filter that skips them): it
                    # stops the read there, and the next one goes on.
                    continue
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)

    def run(self) -> bytes:
        """Run the iterator to the end and return all it wrote."""
        return b"".join(self.chunks())
