"""The kernel layer: memory, types (BTF), symbols (kallsyms), typed objects,
lists and tasks, over any :class:`~kpeek.kernel.memory.KernelMemory`.

Nothing in this package reads the live kernel by itself; :mod:`kpeek.targets`
opens a :class:`~kpeek.kernel.program.Kernel` over the live kernel or a dump.
"""
