"""libbpf (libbpf.so.1) through ctypes: open and load an object (CO-RE
relocation against the kernel's BTF, then the verifier) and attach its
iterator programs. Map access and iterator runs are plain bpf(2) calls
(bpfsys.py), shared with the kept programs (kept.py).

Only the handful of calls kpeek needs are bound. libbpf's log lines are
captured (not printed) so that a failed load turns into one clean line that
names the verifier's complaint.
"""

from __future__ import annotations

# _signal: what the signal module wraps in enums (most of its 0.9 ms import);
# loaded with the interpreter, it takes and gives plain ints.
import _signal
import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache

from kpeek.errors import NotPermitted, NotSupported
from kpeek.sources.bpf.bpfsys import BpfIterator, MapAccess

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


_print_buf = ctypes.create_string_buffer(1 << 18)  # a whole verifier log fits


_LIBBPF_DEBUG = 2  # enum libbpf_print_level: WARN, INFO, DEBUG


@_PRINT_FN
def _capture_print(level: int, fmt: bytes, args: int) -> int:
    if level >= _LIBBPF_DEBUG:
        # Hundreds a load (each CO-RE relocation): 3 ms of formatting for
        # nothing; the verifier's log, which a failure quotes, is a warning.
        return 0
    _libc.vsnprintf(_print_buf, len(_print_buf), fmt, args)
    _log.extend(_print_buf.value.decode(errors="replace").rstrip("\n").split("\n"))
    del _log[:-200]  # keep the tail: the verifier's last words say what failed
    return 0


class _TaskLinkInfo(ctypes.Structure):
    _fields_ = (("tid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("pid_fd", ctypes.c_uint32))


class _IterLinkInfo(ctypes.Union):
    # union bpf_iter_link_info: its largest member (cgroup) is 16 bytes
    _fields_ = (("task", _TaskLinkInfo), ("_size", ctypes.c_uint8 * 16))


class _IterAttachOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("link_info", ctypes.POINTER(_IterLinkInfo)),
        ("link_info_len", ctypes.c_uint32),
    )


class _ProgLoadOpts(ctypes.Structure):
    # struct bpf_prog_load_opts up to attach_btf_obj_fd (the same since libbpf 1.0)
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
    )


_PREPARE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_ProgLoadOpts),
                               ctypes.c_long)


class _HandlerOpts(ctypes.Structure):
    # struct libbpf_prog_handler_opts (libbpf 1.0+)
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("cookie", ctypes.c_long),
        ("prog_setup_fn", ctypes.c_void_p),
        ("prog_prepare_load_fn", _PREPARE_FN),
        ("prog_attach_fn", ctypes.c_void_p),
    )


_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_ITER = 28
_BTF_KIND_FUNC = 12
_ITER_PREFIX = "bpf_iter_"  # an iterator target's BTF function: bpf_iter_task_file
# A program pointer -> the BTF id of its iterator target, for the load under way.
_iter_btf_ids: dict[int, int] = {}
# What an iterator program is given as the program it attaches to, until the
# load: libbpf then does not read the kernel's BTF for it (see _prepare_iter).
_NO_PROG_FD = 0x7FFFFFFF


@_PREPARE_FN
def _prepare_iter(prog: int, opts: ctypes._Pointer, cookie: int) -> int:
    """Where libbpf would look up an iterator program's target in the whole
    kernel BTF (5.5 MB read and parsed, some 10 ms of each process that loads
    programs), give the BTF id known for this boot (coretarget.iter_btf_ids).
    A program given none is looked up as libbpf does."""
    try:
        btf_id = _iter_btf_ids.get(prog)
        if btf_id is None:
            section = _lib().bpf_program__section_name(prog) or b""
            btf_id = _lib().libbpf_find_vmlinux_btf_id(section.partition(b"/")[2], _BPF_TRACE_ITER)
            if btf_id < 0:
                return btf_id
        load = opts.contents
        load.attach_prog_fd = 0  # the placeholder, not a program
        load.attach_btf_obj_fd = 0  # vmlinux
        load.attach_btf_id = btf_id
        return 0
    except Exception:  # an exception cannot cross into C: fail this load
        return -errno.EINVAL


@cache
def _lib() -> ctypes.CDLL:
    name = "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        from ctypes.util import find_library  # only here: subprocess, tempfile (15 ms)

        found = find_library("bpf")
        if not found:
            raise NotSupported(
                "libbpf.so.1 not found; the BPF source needs libbpf "
                "(apt-get install libbpf1 libbpf-dev, or use --source procfs)"
            ) from None
        lib = ctypes.CDLL(found, use_errno=True)
    vp, ci, cu, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
    sigs = {
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "bpf_object__open_mem": (vp, [vp, cs, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_map__name": (ctypes.c_char_p, [vp]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_map__value_size": (cu, [vp]),
        "bpf_map__set_max_entries": (ci, [vp, cu]),
        "bpf_map__max_entries": (cu, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_program__name": (ctypes.c_char_p, [vp]),
        "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
        "bpf_program__autoload": (ctypes.c_bool, [vp]),
        "bpf_program__section_name": (ctypes.c_char_p, [vp]),
        "bpf_program__set_attach_target": (ci, [vp, ci, ctypes.c_char_p]),
        "libbpf_find_vmlinux_btf_id": (ci, [ctypes.c_char_p, ci]),
        "btf__load_vmlinux_btf": (vp, []),
        "btf__find_by_name_kind": (ci, [vp, ctypes.c_char_p, cu]),
        "btf__free": (None, [vp]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_program__attach_iter": (vp, [vp, ctypes.POINTER(_IterAttachOpts)]),
        "bpf_link__fd": (ci, [vp]),
        "bpf_link__destroy": (ci, [vp]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    lib.libbpf_set_print(_capture_print)
    return lib


@cache
def _iter_handler() -> bool:
    """Whether kpeek's own handler of SEC("iter/...") programs is registered
    (libbpf 1.0+): once a process, before any object is opened."""
    opts = _HandlerOpts(sz=ctypes.sizeof(_HandlerOpts), prog_prepare_load_fn=_prepare_iter)
    lib = _lib()
    register = getattr(lib, "libbpf_register_prog_handler", None)
    if register is None:
        return False
    register.restype = ctypes.c_int
    register.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return register(b"iter+", _BPF_PROG_TYPE_TRACING, _BPF_TRACE_ITER, ctypes.byref(opts)) > 0


def vmlinux_iter_ids(targets: Iterable[str]) -> dict[str, int]:
    """The BTF ids of the kernel's iterator targets (``task_file``: its
    bpf_iter_task_file function), from one read of its whole BTF; a target
    it lacks is left out."""
    lib = _lib()
    btf = lib.btf__load_vmlinux_btf()
    if not btf:
        return {}
    try:
        found = {t: lib.btf__find_by_name_kind(btf, (_ITER_PREFIX + t).encode(), _BTF_KIND_FUNC)
                 for t in targets}
    finally:
        lib.btf__free(btf)
    return {t: i for t, i in found.items() if i > 0}


def _errno_of(ret: int) -> int:
    # libbpf 1.x returns -errno and also sets errno; NULL pointers set errno only.
    return -ret if ret < 0 else (ctypes.get_errno() or errno.EINVAL)


def _fail(what: str, err: int) -> NotSupported | NotPermitted:
    # The verifier refuses a program with EACCES too: that is this kernel
    # saying no to the program, not to the user.
    verifier = any("PROG LOAD LOG --" in line for line in _log)  # BEGIN or END
    if err == errno.EPERM or (err == errno.EACCES and not verifier):
        return NotPermitted(
            f"{what}: {os.strerror(err)}; run as root (BPF iterators need CAP_BPF "
            "and CAP_PERFMON) or use --source procfs"
        )
    detail = ""
    for line in reversed(_log):
        text = line.strip()
        if text and not text.startswith(("libbpf:", "-- END", "processed ", "verification time")):
            detail = f" ({text[:160]})"
            break
    why = "the kernel's verifier refused it" if verifier else os.strerror(err)
    return NotSupported(f"{what}: {why}{detail}; use --source procfs")


class _OpenOpts(ctypes.Structure):
    # struct bpf_object_open_opts up to kernel_log_level (libbpf 1.1; sz tells)
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    )


class BpfObject(MapAccess):
    """A loaded BPF object: its programs can be attached as iterators.

    Raises NotPermitted when the kernel refuses BPF to this user and
    NotSupported when the object does not open or load (the verifier's last
    complaint is in the message).
    """

    def __init__(self, data: bytes, name: str, programs: frozenset[str] | None = None,
                 map_sizes: Mapping[str, int] | None = None, core_btf: str | None = None,
                 iter_ids: Callable[[frozenset[str]], Mapping[str, int]] | None = None) -> None:
        """``programs``: load (and have the kernel verify) only these, not
        every program in the object; None: all of them. ``map_sizes``: maps
        made with fewer entries than the object declares (the kernel
        allocates an LRU map's every entry up front); never more. ``core_btf``:
        the BTF file to relocate against (coretarget.py), else the kernel's.
        ``iter_ids``: the BTF ids of iterator targets (coretarget.py), given
        the targets' names; then libbpf need not read the kernel's BTF at all
        (a load that fails with them is made again without)."""
        lib = _lib()
        self.name = name
        self.only = programs
        # Programs this kernel's verifier refused, each with why: left out,
        # the others loaded (a newer kernel may stop trusting a pointer one
        # program uses; 6.18.44 refused snapshot_maps' bpf_d_path on a vma's
        # file), and attach_iter says why for them.
        self.refused: dict[str, str] = {}
        self._data = ctypes.create_string_buffer(data, len(data))  # libbpf keeps pointers
        self._obj: int | None = None
        self._links: list[int] = []
        # The verifier gives up with EAGAIN when a signal arrives while it
        # works (a SIGCHLD from any child of ours is enough): hold signals
        # off during the load, and start afresh if one still got through
        # (libbpf refuses to load one object twice).
        opts = None
        if core_btf is not None:
            opts = ctypes.byref(_OpenOpts(sz=ctypes.sizeof(_OpenOpts),
                                          btf_custom_path=os.fsencode(core_btf)))
        held = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
        hinted: list[int] = []
        if iter_ids is not None and not _iter_handler():
            iter_ids = None  # libbpf before 1.0: it finds the targets itself
        try:
            interrupted = 0
            while True:
                self.close()
                _log.clear()
                ctypes.set_errno(0)
                self._obj = lib.bpf_object__open_mem(self._data, len(data), opts)
                if not self._obj:
                    raise _fail(f"cannot open BPF object {name}", _errno_of(0))
                if self.refused:
                    self.only = (programs or self._program_names()) - self.refused.keys()
                if self.only is not None:
                    self._load_only(self.only)
                for m, entries in (map_sizes or {}).items():
                    made = self._map(m)
                    lib.bpf_map__set_max_entries(made, min(entries, lib.bpf_map__max_entries(made)))
                if iter_ids is not None:
                    hinted = self._hint_iter_targets(iter_ids)
                try:
                    ret = lib.bpf_object__load(self._obj)
                finally:
                    for prog in hinted:
                        _iter_btf_ids.pop(prog, None)
                if ret == -errno.EAGAIN and interrupted < 2:
                    interrupted += 1
                    continue
                if ret != 0 and hinted:
                    iter_ids, hinted = None, []  # as libbpf alone would load it
                    continue
                refused = self._one_refused(ret)
                if refused is None:
                    break
                self.refused[refused] = str(
                    _fail(f"BPF program {refused} not loaded", _errno_of(ret)))
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
        if ret != 0:
            self.close()
            raise _fail(f"cannot load BPF program {name}", _errno_of(ret))

    def _items(self, next_of: Callable[[int | None, int | None], int | None]) -> Iterator[int]:
        """The object's programs or maps (``next_of``: bpf_object__next_program
        or bpf_object__next_map), in its order."""
        item = next_of(self._obj, None)
        while item:
            yield item
            item = next_of(self._obj, item)

    def _programs(self) -> Iterator[int]:
        return self._items(_lib().bpf_object__next_program)

    def _hint_iter_targets(self, iter_ids: Callable[[frozenset[str]], Mapping[str, int]]
                           ) -> list[int]:
        """Give each iterator program that will load its target's BTF id (see
        _prepare_iter) and the placeholder that keeps libbpf from reading the
        kernel's BTF for it; the programs hinted."""
        lib = _lib()
        targets: dict[int, str] = {}
        for prog in self._programs():
            kind, _, target = (lib.bpf_program__section_name(prog) or b"").decode().partition("/")
            if kind == "iter" and lib.bpf_program__autoload(prog):
                targets[prog] = target
        ids = iter_ids(frozenset(targets.values())) if targets else {}
        hinted = [p for p, t in targets.items() if t in ids
                  and lib.bpf_program__set_attach_target(p, _NO_PROG_FD, None) == 0]
        _iter_btf_ids.update((p, ids[targets[p]]) for p in hinted)
        return hinted

    def _one_refused(self, ret: int) -> str | None:
        """The program whose refusal by the verifier failed this load, when
        others remain to be loaded without it; None otherwise (an EAGAIN is a
        signal that interrupted the verifier, not a refusal)."""
        if ret in (0, -errno.EAGAIN) or not any("PROG LOAD LOG --" in line for line in _log):
            return None
        loading = self.only if self.only is not None else self._program_names()
        for line in reversed(_log):
            # libbpf: prog 'snapshot_maps': failed to load: -13
            head, _, rest = line.partition("prog '")
            name, _, tail = rest.partition("'")
            if head.startswith("libbpf:") and tail.startswith(": failed to load"):
                return name if name in loading and len(loading) > 1 else None
        return None

    def _program_names(self) -> frozenset[str]:
        name = _lib().bpf_program__name
        return frozenset(name(prog).decode() for prog in self._programs())

    def _load_only(self, programs: frozenset[str]) -> None:
        lib = _lib()
        for prog in self._programs():
            if lib.bpf_program__name(prog).decode() not in programs:
                lib.bpf_program__set_autoload(prog, False)

    def has_programs(self, programs: frozenset[str] | None) -> bool:
        """Whether ``programs`` (None: every one) were loaded, or refused
        (loading the object again would not load those)."""
        if self.only is None:
            return True
        wanted = programs if programs is not None else self._program_names()
        return wanted - self.refused.keys() <= self.only

    def close(self) -> None:
        lib = _lib()
        for link in getattr(self, "_links", ()):
            lib.bpf_link__destroy(link)
        self._links = []
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None

    def __del__(self, _suppress: type = contextlib.suppress) -> None:
        # At exit this module may be torn down first (it is imported late).
        with _suppress(Exception):
            self.close()

    def _map(self, suffix: str) -> int:
        lib = _lib()
        for m in self._items(lib.bpf_object__next_map):
            if (lib.bpf_map__name(m) or b"").decode().endswith(suffix):
                return m
        raise NotSupported(f"BPF object {self.name} has no map {suffix}")

    def map_fd(self, suffix: str) -> int:
        """The fd of the map whose name ends with ``suffix`` (".bss", "want")."""
        return _lib().bpf_map__fd(self._map(suffix))

    def map_value_size(self, suffix: str) -> int:
        return _lib().bpf_map__value_size(self._map(suffix))

    def program_fds(self) -> dict[str, int]:
        """Each program's name and fd (kept.py pins them)."""
        lib = _lib()
        return self._each(lib.bpf_object__next_program, lib.bpf_program__name,
                          lib.bpf_program__fd)

    def map_fds(self) -> dict[str, int]:
        """Each map's name (``<prefix>.bss`` for the globals) and fd."""
        lib = _lib()
        return self._each(lib.bpf_object__next_map, lib.bpf_map__name, lib.bpf_map__fd)

    def _each(self, next_of: Callable, name_of: Callable, fd_of: Callable) -> dict[str, int]:
        return {name_of(item).decode(): fd_of(item) for item in self._items(next_of)}

    def attach_iter(self, program: str, *, tid: int = 0, tgid: int = 0) -> BpfIterator:
        """Attach ``program`` (SEC("iter/...")) as an iterator link.

        ``tid``/``tgid`` limit an iter/task* program to one task or one
        thread group (kernel 6.1+). Raises NotSupported if it cannot attach.
        """
        lib = _lib()
        if program in self.refused:
            raise NotSupported(self.refused[program])
        prog = lib.bpf_object__find_program_by_name(self._obj, program.encode())
        if not prog:
            raise NotSupported(f"BPF object {self.name} has no program {program}")
        opts_p = None
        if tid or tgid:
            info = _IterLinkInfo()
            info.task.tid, info.task.pid = tid, tgid
            opts = _IterAttachOpts(
                ctypes.sizeof(_IterAttachOpts), ctypes.pointer(info), ctypes.sizeof(info)
            )
            opts_p = ctypes.pointer(opts)
        ctypes.set_errno(0)
        link = lib.bpf_program__attach_iter(prog, opts_p)
        if not link:
            raise _fail(f"cannot attach BPF iterator {program}", _errno_of(0))
        self._links.append(link)
        return BpfIterator(lib.bpf_link__fd(link), program)
