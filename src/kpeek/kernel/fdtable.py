"""Descriptor tables and open files: files_struct -> fdtable -> struct file -> inode.

``fdtable.open_fds`` says which slots are in use, ``fd[i]`` is the struct
file of slot i and ``close_on_exec`` has its close-on-exec bit. Only the
in-use slots are read. Fields that changed between kernels (``f_count``
became ``f_ref`` in 6.13) are found by name in BTF.
"""

from __future__ import annotations

from kpeek.kernel.layout import Layout
from kpeek.kernel.program import Kernel
from kpeek.records import record

MAX_FDS = 1 << 22  # a bound on one table's size (NR_OPEN is 1 << 20 by default)


@record(frozen=True, slots=True)
class FileFacts:
    """What a struct file and its inode say (addresses raw)."""

    address: int
    pos: int
    flags: int
    f_mode: int
    refcount: int
    inode: int
    vfsmount: int
    dentry: int
    ino: int
    s_dev: int
    i_mode: int
    nlink: int
    size: int


class FileReader:
    """Reads descriptor tables and struct files through one kernel's memory."""

    def __init__(self, kernel: Kernel) -> None:
        btf = kernel.types
        self.memory = kernel.memory
        self._files = Layout(btf, "struct files_struct")
        self._fdt = Layout(btf, "struct fdtable")
        self._file = Layout(btf, "struct file")
        self._count = self._file.first("f_ref.refcnt.counter", "f_count.counter")
        self.file_span = self._file.span("f_pos", "f_flags", "f_mode", "f_inode",
                                          "f_path.mnt", "f_path.dentry", self._count)
        self._inode = Layout(btf, "struct inode")
        self._inode_span = self._inode.span("i_ino", "i_sb", "i_mode", "i_nlink", "i_size")
        self._s_dev_at = Layout(btf, "struct super_block").off("s_dev")
        self._sb_dev: dict[int, int] = {}

    def table(self, files_struct: int) -> list[tuple[int, int, bool]]:
        """[(fd, struct file address, close-on-exec)] of a files_struct, by fd.

        Raises MemoryReadError; a table larger than MAX_FDS raises ValueError.
        """
        fdt = int.from_bytes(
            self.memory.read(files_struct + self._files.off("fdt"), 8), "little")
        raw = self.memory.read(fdt, self._fdt.span("max_fds", "fd", "close_on_exec",
                                                   "open_fds"))
        max_fds = self._fdt.int(raw, "max_fds")
        if max_fds > MAX_FDS:
            raise ValueError(f"fdtable at 0x{fdt:x} claims {max_fds} slots")
        words = (max_fds + 63) // 64
        open_bits = int.from_bytes(self.memory.read(self._fdt.int(raw, "open_fds"), words * 8),
                                   "little")
        if not open_bits:
            return []
        cloexec_bits = int.from_bytes(
            self.memory.read(self._fdt.int(raw, "close_on_exec"), words * 8), "little")
        used = open_bits.bit_length()  # slots past the highest open fd are not read
        pointers = self.memory.read(self._fdt.int(raw, "fd"), used * 8)
        out = []
        for fd in range(used):
            if open_bits >> fd & 1:
                file = int.from_bytes(pointers[fd * 8 : fd * 8 + 8], "little")
                if file:  # reserved by open() but not installed yet
                    out.append((fd, file, bool(cloexec_bits >> fd & 1)))
        return out

    def file(self, address: int) -> FileFacts:
        """The struct file at ``address`` with its inode's facts (raises MemoryReadError)."""
        f = self._file
        raw = self.memory.read(address, self.file_span)
        count = f.int(raw, self._count)
        if self._count.startswith("f_ref"):
            count += 1  # file_ref_t counts from 0 for one reference
        inode = f.int(raw, "f_inode")
        ino = s_dev = i_mode = nlink = size = 0
        if inode:
            i = self._inode
            iraw = self.memory.read(inode, self._inode_span)
            ino, i_mode = i.int(iraw, "i_ino"), i.int(iraw, "i_mode")
            nlink, size = i.int(iraw, "i_nlink"), i.int(iraw, "i_size")
            s_dev = self._dev(i.int(iraw, "i_sb"))
        return FileFacts(address, f.int(raw, "f_pos"), f.int(raw, "f_flags"),
                         f.int(raw, "f_mode"), count, inode, f.int(raw, "f_path.mnt"),
                         f.int(raw, "f_path.dentry"), ino, s_dev, i_mode, nlink, size)

    def _dev(self, sb: int) -> int:
        if sb not in self._sb_dev:
            raw = self.memory.read(sb + self._s_dev_at, 4)
            self._sb_dev[sb] = int.from_bytes(raw, "little")
        return self._sb_dev[sb]
