"""Live kernel data through BPF: iterators over tasks and files, and a reader
of arbitrary kernel memory, all checked by the kernel's verifier.

The programs are CO-RE C (``*.bpf.c`` next to this file) compiled by clang
against a ``vmlinux.h`` made from the running kernel's BTF when first used,
cached under ``~/.cache/kpeek/bpf``, and loaded through libbpf via ctypes.
Modules:

- ``build``: compile and cache the objects.
- ``libbpf``: the ctypes binding; open, load, attach and run iterators.
- ``reader``: :class:`BpfKernelMemory`, the KernelMemory of the live kernel.
- ``tasks``: task_struct addresses by tid.
- ``snapshot``: a whole Snapshot (tasks, descriptors, open files, inodes).
"""
