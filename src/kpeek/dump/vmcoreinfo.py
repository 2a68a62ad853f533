"""VMCOREINFO: the ``KEY=value`` lines the kernel leaves for dump readers.

    OSRELEASE=6.1.0-57-cloud-amd64
    BUILD-ID=01d2640d...
    KERNELOFFSET=19800000
    SYMBOL(kallsyms_names)=ffffffff9b975590
    NUMBER(phys_base)=-306184192

SYMBOL values are run-time addresses (KASLR included); KERNELOFFSET is hex.
"""

from __future__ import annotations

from kpeek.records import record


@record(frozen=True)
class VmcoreInfo:
    entries: dict[str, str]

    @classmethod
    def parse(cls, data: bytes) -> VmcoreInfo:
        entries = {}
        for line in data.split(b"\0", 1)[0].decode("ascii", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                entries[key.strip()] = value.strip()
        return cls(entries)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def symbol(self, name: str) -> int | None:
        """``SYMBOL(name)``: the symbol's run-time address, or None."""
        value = self.entries.get(f"SYMBOL({name})")
        return int(value, 16) if value else None

    def number(self, name: str) -> int | None:
        value = self.entries.get(f"NUMBER({name})")
        return int(value, 0) if value else None

    @property
    def release(self) -> str | None:
        return self.entries.get("OSRELEASE")

    @property
    def build_id(self) -> str | None:
        return self.entries.get("BUILD-ID")

    @property
    def page_size(self) -> int:
        return int(self.entries.get("PAGESIZE", "4096"))

    @property
    def kernel_offset(self) -> int:
        """The KASLR slide of the kernel image (0 when not randomized)."""
        return int(self.entries.get("KERNELOFFSET", "0"), 16)

    @property
    def crash_time(self) -> int | None:
        """``CRASHTIME``: seconds since the epoch, set by a kdump panic (not by QEMU)."""
        value = self.entries.get("CRASHTIME")
        return int(value) if value else None
