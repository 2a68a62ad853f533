"""A dump's memory as a :class:`~kpeek.kernel.memory.KernelMemory`, read by drgn.

drgn opens ELF and kdump-compressed dumps (and makedumpfile's flattened
stream) and translates kernel virtual addresses through the dump's own page
tables, located by VMCOREINFO; no debuginfo is loaded. A page the dump does
not hold (filtered out by makedumpfile, or never mapped) reads as
"not in dump".
"""

from __future__ import annotations

import logging
import os

from kpeek.errors import NotSupported, UsageError
from kpeek.kernel.memory import MemoryReadError


def _drgn():
    try:
        import drgn
    except ImportError:
        raise NotSupported("reading dumps needs drgn (pip install drgn)") from None
    return drgn


class DumpMemory:
    """Kernel virtual memory of the dump at ``path`` (read only, by nature)."""

    def __init__(self, path: str) -> None:
        drgn = _drgn()
        # drgn warns through logging (e.g. about the flattened format): not our user's concern
        logging.getLogger("drgn").setLevel(logging.ERROR)
        # drgn's plugins (its crash-like commands) cost ~0.3 s of imports and kpeek
        # uses none of them; DRGN_DISABLE_PLUGINS set by the user still wins
        os.environ.setdefault("DRGN_DISABLE_PLUGINS", "*")
        self._fault = drgn.FaultError
        self.program = drgn.Program(drgn.host_platform)
        try:
            self.program.set_core_dump(path)
        except Exception as e:  # OSError, ValueError, drgn.Error...: a file drgn cannot read
            raise UsageError(f"{path}: cannot open the dump: {e}") from None
        if not self.program.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
            raise NotSupported(f"{path}: not a Linux kernel dump (no VMCOREINFO)")

    def read(self, address: int, size: int) -> bytes:
        if size < 0 or address < 0 or address + size > 1 << 64:
            raise MemoryReadError(address, size, "not a kernel address")
        try:
            return self.program.read(address, size, False)
        except self._fault:
            raise MemoryReadError(address, size, "not in dump") from None
        except (ValueError, OverflowError) as e:
            raise MemoryReadError(address, size, str(e)) from None

    def read_physical(self, address: int, size: int) -> bytes:
        try:
            return self.program.read(address, size, True)
        except self._fault:
            raise MemoryReadError(address, size, "physical address not in dump") from None
