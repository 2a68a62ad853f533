"""Crash dumps (vmcores) as a :class:`~kpeek.kernel.program.Kernel`, with no debuginfo.

    file     kpeek.dump.fileformat: ELF or kdump, x86-64, its notes and VMCOREINFO
    memory   drgn: pages and page-table translation (kpeek.dump.memory)
    symbols  kallsyms decoded from memory, located by VMCOREINFO (+ each module's own)
    types    BTF from memory between __start_BTF and __stop_BTF (or --vmlinux)
    tasks    a walk of init_task's task list
"""

from __future__ import annotations

from kpeek.dump.fileformat import DumpFile, identify
from kpeek.dump.kallsyms import decode_kallsyms
from kpeek.dump.memory import DumpMemory
from kpeek.dump.types import btf_from_memory
from kpeek.dump.vmlinux import vmlinux_btf, vmlinux_symbols
from kpeek.errors import NotSupported
from kpeek.kernel.program import Kernel
from kpeek.kernel.tasks import WalkedTaskIndex
from kpeek.records import record


@record
class DumpKernel(Kernel):
    """A kernel read from a dump; ``core`` is the file with its notes and VMCOREINFO."""

    core: DumpFile | None = None


def open_dump(path: str, *, vmlinux: str | None = None) -> DumpKernel:
    """The kernel in the dump at ``path``. UsageError for a file that is not a
    readable dump; NotSupported for what the dump lacks (VMCOREINFO, BTF), with
    what would make it work."""
    core = identify(path)
    if core.vmcoreinfo is None:
        raise NotSupported(
            f"{path}: the dump has no VMCOREINFO, so its page tables and symbols cannot be "
            "found (QEMU: load qemu_fw_cfg in the guest and run QEMU with -device vmcoreinfo; "
            "or take the dump with kdump)")
    origin = f"the dump {path}"
    memory = DumpMemory(path)
    notes = []
    try:
        symbols = decode_kallsyms(memory, core.vmcoreinfo, origin)
    except NotSupported:
        if not vmlinux:
            raise
        # before 5.19: the vmlinux's own symbol table, moved by the KASLR offset
        symbols = vmlinux_symbols(vmlinux, core.vmcoreinfo.kernel_offset)
        notes.append(f"symbols from {vmlinux}: VMCOREINFO does not locate kallsyms")
    types = vmlinux_btf(vmlinux) if vmlinux else btf_from_memory(memory, symbols, origin)
    kernel = DumpKernel(types, symbols, memory, live=False, origin=origin, notes=notes,
                        core=core)
    kernel.tasks = WalkedTaskIndex(kernel)
    _add_module_symbols(kernel)
    return kernel


def _add_module_symbols(kernel: DumpKernel) -> None:
    """Each loaded module's own symbols join the kernel's (best effort: a module
    list the dump does not hold leaves the kernel's symbols alone)."""
    from kpeek.kernel.memory import MemoryReadError
    from kpeek.kernel.modules import with_module_symbols

    try:
        kernel.symbols = with_module_symbols(kernel)
    except (MemoryReadError, NotSupported) as e:
        kernel.notes.append(f"module symbols not read: {e}")
