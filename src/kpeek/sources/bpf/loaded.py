"""Loaded BPF objects, one per program file and process, loaded on first use."""

from __future__ import annotations

import os
import threading
from importlib import resources

from kpeek.errors import NotSupported
from kpeek.sources.bpf.libbpf import BpfIterator, BpfObject

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
_objects: dict[str, BpfObject] = {}
_lock = threading.Lock()


def bpf_object(name: str) -> BpfObject:
    """The object ``<name>.bpf.o`` shipped in this package, loaded once per process.

    Raises NotPermitted (not root) or NotSupported (no BTF, the verifier
    refused), each with one line saying what would make it work.
    """
    with _lock:
        obj = _objects.get(name)
        if obj is None:
            if not os.path.exists(VMLINUX_BTF):
                raise NotSupported(
                    f"the kernel has no BTF ({VMLINUX_BTF}), which BPF CO-RE needs; it "
                    "must be built with CONFIG_DEBUG_INFO_BTF=y (use --source procfs)"
                )
            obj = BpfObject(shipped_object(name), name)
            _objects[name] = obj
        return obj


def shipped_object(name: str) -> bytes:
    """The bytes of ``<name>.bpf.o``, built once with CO-RE relocations and
    installed with the Python code (never from a user-writable cache: root
    loads only what came with kpeek itself)."""
    try:
        return resources.files(__package__).joinpath(f"{name}.bpf.o").read_bytes()
    except OSError:
        raise NotSupported(
            f"this kpeek installation lacks its BPF object {name}.bpf.o (rebuild it with "
            "python -m kpeek.sources.bpf.build, or use --source procfs)"
        ) from None


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
