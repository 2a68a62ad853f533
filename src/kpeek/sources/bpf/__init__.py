"""Live kernel data through BPF: iterators over tasks and files, and a reader
of arbitrary kernel memory, all checked by the kernel's verifier.

The programs are CO-RE C (``*.bpf.c`` next to this file), compiled once
against the hand-kept ``vmlinux.h`` into the ``*.bpf.o`` objects shipped with
the package, and loaded through libbpf via ctypes, which relocates them for
the running kernel. Modules:

- ``build``: rebuild the shipped objects (developers only).
- ``loaded``: get a shipped object once per process: kept, else loaded.
- ``libbpf``: the ctypes binding; open, load and attach iterators.
- ``bpfsys``: bpf(2) itself: maps, pins, iterator links and runs.
- ``kept``: programs loaded once, pinned in bpffs, reused by later processes.
- ``reader``: :class:`BpfKernelMemory`, the KernelMemory of the live kernel.
- ``tasks``: task_struct addresses by tid.
- ``snapshot``: a whole Snapshot (tasks, descriptors, open files, inodes).
"""
