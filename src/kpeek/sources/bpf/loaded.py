"""BPF objects, one per program file and process, got on first use: the
kept programs of an earlier kpeek process when there are trusted ones
(kept.py: no libbpf, no BTF, no verifier), else loaded with libbpf and then
kept for the next process."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator

from kpeek.errors import NotSupported
from kpeek.sources.bpf import kept

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from kpeek.sources.bpf.bpfsys import BpfIterator
    from kpeek.sources.bpf.libbpf import BpfObject

    Object = BpfObject | kept.KeptObject

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
_objects: dict[str, Object] = {}
_few: set[str] = set()  # objects loaded with maps sized for a few processes
_lock = threading.Lock()


def bpf_object(name: str, programs: Iterable[str] | None = None, few: bool = False) -> Object:
    """The object ``<name>.bpf.o`` shipped in this package, got once per process.

    ``programs``: those the caller will run (None: any). An object that will
    not be kept for later processes (no bpffs, KPEEK_KEEP_BPF=0, the reader)
    is loaded with just the programs asked for so far: the verifier's time
    and libbpf's CO-RE relocations are paid for those alone (kpeek ps runs
    one of the snapshot object's five). Asked for another one later, it is
    loaded again with that one too. ``few``: it will walk at most
    PER_PROCESS processes, and such a private object gets maps sized for
    that (see _FEW_ENTRIES); asked later for more, it is loaded again.

    Raises NotPermitted (not root) or NotSupported (no BTF, the verifier
    refused), each with one line saying what would make it work.
    """
    wanted = None if programs is None else frozenset(programs)
    with _lock:
        obj = _objects.get(name)
        if obj is not None and (isinstance(obj, kept.KeptObject) or (
            obj.has_programs(wanted) and (few or name not in _few)
        )):
            return obj
        if obj is None:
            obj = kept.open_kept(name)
            if obj is not None:
                _objects[name] = obj
                return obj
        private = not kept.will_publish(name)
        if wanted is not None and private:
            if obj is not None and obj.only is not None:
                wanted |= obj.only  # what it ran before, and this
        else:  # kept for others, or asked for whole: whole, not sized for a few
            wanted, few = None, False
        fresh, data = _load(name, wanted, few, private)
        if few:
            _few.add(name)
        else:
            _few.discard(name)
        if wanted is None and not fresh.refused:  # only whole objects are kept
            kept.publish(name, data, fresh.program_fds(), fresh.map_fds())
        if obj is not None:  # its links die with it
            for key in [k for k in _iterators if k[0] == name]:
                del _iterators[key]
        _objects[name] = fresh
        return fresh


def _load(
    name: str, programs: frozenset[str] | None = None, few: bool = False,
    private: bool = False,
) -> tuple[BpfObject, bytes]:
    """A load with libbpf (CO-RE relocation, the verifier) of ``programs``
    (None: all), with maps sized for a ``few`` processes, for this machine's
    open files (``private``: for this process alone) or for any, and the
    object's bytes."""
    if not os.path.exists(VMLINUX_BTF):
        raise NotSupported(
            f"the kernel has no BTF ({VMLINUX_BTF}), which BPF CO-RE needs; it "
            "must be built with CONFIG_DEBUG_INFO_BTF=y (use --source procfs)"
        )
    data = shipped_object(name)
    from kpeek.sources.bpf.coretarget import iter_btf_ids, target_btf
    from kpeek.sources.bpf.libbpf import BpfObject

    if few:
        sizes = dict(_FEW_ENTRIES.get(name, {}))
    elif private:
        sizes = _machine_entries(name)
    else:
        sizes = {}
    if programs is not None:
        sizes.update((m, 1) for m, user in _MAP_USERS.get(name, {}).items() if user not in programs)
    core = target_btf(name, data, _object_path(name))
    if core is not None:
        try:
            return BpfObject(data, name, programs, sizes, core, iter_btf_ids), data
        except NotSupported:
            pass  # relocated against the kernel's own BTF, as without it
    return BpfObject(data, name, programs, sizes, iter_ids=iter_btf_ids), data


# The kernel allocates an LRU hash map's every entry when it makes the map:
# seen_files' 262,144 cost ~11 ms, more than the verifier, of a kpeek files
# PID. Maps that one program alone uses are made with a single entry when it
# is not loaded; the per-run "seen" marks, with room for a few processes
# when no more will be walked (an evicted mark only has a path sent again).
_MAP_USERS = {
    "snapshot": {"seen_files": "snapshot_files", "file_paths": "snapshot_files",
                 "seen_mapped": "snapshot_maps"},
}
_FEW_ENTRIES = {"snapshot": {"seen_files": 1 << 12, "seen_mapped": 1 << 12}}


def _machine_entries(name: str) -> dict[str, int]:
    """The "seen" marks of a private whole-system load, sized for this
    machine: room for twice the struct files it has now (/proc/sys/fs/
    file-nr), a power of two, at least _FEW_ENTRIES' (never more than
    built). An object kept for others keeps the built size: 262,144
    entries of seen_files take the kernel 9 ms to make, where 2,000 open
    files need 4,096."""
    try:
        with open("/proc/sys/fs/file-nr", "rb") as f:
            files = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {m: max(few, 1 << (2 * files - 1).bit_length())
            for m, few in _FEW_ENTRIES.get(name, {}).items()}


@contextlib.contextmanager
def exclusive(
    name: str, programs: Iterable[str] | None = None, few: bool = False
) -> Iterator[Object]:
    """The object (with ``programs`` and ``few``, see bpf_object), its
    globals and maps this process's alone for the span.

    Kept objects are shared by every kpeek process: the span holds their
    lock. When another process holds it for too long, this process loads a
    private object (used from then on) rather than wait.
    """
    obj = bpf_object(name, programs, few)
    if not isinstance(obj, kept.KeptObject):
        yield obj
        return
    if not obj.acquire():
        private = _load(name)[0]
        kept.status[name] = f"loaded: {obj.path} was busy (or forgotten)"
        with _lock:
            _objects[name] = private
            for key in [k for k in _iterators if k[0] == name]:
                del _iterators[key]
        yield private
        return
    try:
        yield obj
    finally:
        obj.release()


def shipped_object(name: str) -> bytes:
    """The bytes of ``<name>.bpf.o``, built once with CO-RE relocations and
    installed with the Python code (never from a user-writable cache: root
    loads only what came with kpeek itself)."""
    try:
        with open(_object_path(name), "rb") as f:
            return f.read()
    except OSError:
        raise NotSupported(
            f"this kpeek installation lacks its BPF object {name}.bpf.o (rebuild it with "
            "python -m kpeek.sources.bpf.build, or use --source procfs)"
        ) from None


def _object_path(name: str) -> str:
    # A file beside this module, as kept.py finds objects.json (importlib.
    # resources would import pathlib, tempfile and zipfile: 15 ms of CPU).
    return os.path.join(os.path.dirname(__file__), f"{name}.bpf.o")


_iterators: dict[tuple[str, str, int], BpfIterator] = {}


def _with_program(name: str, program: str) -> Object:
    """The object with ``program`` loaded: all of its programs on first use
    (its maps sized as the span that runs it asked: see exclusive)."""
    return bpf_object(name, None if name not in _objects else (program,), few=True)


def bpf_iterator(name: str, program: str, *, tid: int = 0) -> BpfIterator:
    """The iterator link of ``program`` in ``<name>.bpf.c``, attached once.

    ``tid`` limits an iter/task program to that one thread. Raises like
    :func:`bpf_object`.
    """
    obj = _with_program(name, program)
    with _lock:
        key = (name, program, tid)
        it = _iterators.get(key)
        if it is None:
            it = obj.attach_iter(program, tid=tid)
            _iterators[key] = it
        return it


# At most this many processes are walked one by one, each through links of
# its own (task iterators take a pid, 6.1+): the kernel then visits only
# their tasks, descriptors and memory maps, where a walk of every task in
# the machine thinned out by the filter map costs as much as a whole-system
# snapshot (0.16 s of CPU for one pid's maps among 5,000 processes).
PER_PROCESS = 32
_MAX_LINKS = 1024  # a long-lived process (kpeek serve) asked about ever new pids
_per_process: bool | None = None  # None: not known yet


def iterate(name: str, program: str, tgids: list[int] | None) -> bytes:
    """The output of ``program`` over the processes ``tgids`` (None: all), in
    their order. Call inside the object's filter (snapshot.filtered). A
    process the iterators cannot visit by pid gives nothing (the caller reads
    it from /proc, as it does any process the iterators miss)."""
    global _per_process
    if tgids is None or len(tgids) > PER_PROCESS or len(_iterators) > _MAX_LINKS:
        return bpf_iterator(name, program).run()
    if _per_process is None:  # this kernel takes a pid if it takes ours
        try:
            _process_iterator(name, program, os.getpid())
            _per_process = True
        except NotSupported:
            _per_process = False
    if not _per_process:
        return bpf_iterator(name, program).run()
    out = []
    for tgid in tgids:
        try:
            out.append(_process_iterator(name, program, tgid).run())
        except NotSupported:
            continue  # exited, or out of the iterators' sight
    return b"".join(out)


def _process_iterator(name: str, program: str, tgid: int) -> BpfIterator:
    obj = _with_program(name, program)
    with _lock:
        key = (name, program, -tgid)  # negative: a process, not a thread
        it = _iterators.get(key)
        if it is None:
            it = obj.attach_iter(program, tgid=tgid)
            _iterators[key] = it
        return it
