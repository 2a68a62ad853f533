"""The kernel's BTF types from the dump: the .BTF section in its memory
(``__start_BTF`` .. ``__stop_BTF``, byte-identical to vmlinux's). A kernel
built without CONFIG_DEBUG_INFO_BTF needs ``--vmlinux`` (kpeek.dump.vmlinux)."""

from __future__ import annotations

from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.btf import Btf, BtfError
from kpeek.kernel.memory import KernelMemory, MemoryReadError
from kpeek.kernel.symbols import Kallsyms

MAX_BTF = 64 << 20


def btf_from_memory(memory: KernelMemory, symbols: Kallsyms, origin: str) -> Btf:
    start, stop = symbols.address_of("__start_BTF"), symbols.address_of("__stop_BTF")
    if start is None or stop is None or not 0 < stop - start <= MAX_BTF:
        raise NotSupported(
            f"{origin}: the kernel has no BTF (built without CONFIG_DEBUG_INFO_BTF): "
            "give a vmlinux with BTF for this exact build with --vmlinux")
    try:
        return Btf.from_bytes(memory.read(start, stop - start))
    except MemoryReadError as e:
        raise UsageError(f"{origin}: the kernel's BTF is not in the dump ({e})") from None
    except BtfError as e:
        raise UsageError(f"{origin}: the kernel's BTF in the dump is damaged ({e})") from None
