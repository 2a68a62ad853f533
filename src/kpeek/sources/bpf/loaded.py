"""Loaded BPF objects, one per program file and process, loaded on first use."""

from __future__ import annotations

import threading

from kpeek.sources.bpf import build
from kpeek.sources.bpf.libbpf import BpfIterator, BpfObject

_objects: dict[str, BpfObject] = {}
_lock = threading.Lock()


def bpf_object(name: str) -> BpfObject:
    """The loaded object of ``<name>.bpf.c``, compiled and loaded once per process.

    Raises NotPermitted (not root) or NotSupported (no BTF, no clang, the
    verifier refused), each with one line saying what would make it work.
    """
    with _lock:
        obj = _objects.get(name)
        if obj is None:
            obj = BpfObject(build.compiled_object(name), name)
            _objects[name] = obj
        return obj


_iterators: dict[tuple[str, str, int], BpfIterator] = {}


def bpf_iterator(name: str, program: str, *, tid: int = 0) -> BpfIterator:
    """The iterator link of ``program`` in ``<name>.bpf.c``, attached once.

    ``tid`` limits an iter/task program to that one thread. Raises like
    :func:`bpf_object`.
    """
    obj = bpf_object(name)
    with _lock:
        key = (name, program, tid)
        it = _iterators.get(key)
        if it is None:
            it = obj.attach_iter(program, tid=tid)
            _iterators[key] = it
        return it
