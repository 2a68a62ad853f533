"""Paths of open files from dentries and mounts, as the kernel's d_path builds them.

A path is the dentry's name, its parent's, ... up to the root of its mount
(``mnt.mnt_root``), then the mount's mountpoint in its parent mount, and so
on up to a root directory (a task's ``fs->root``) or the top of the mount
tree. An unlinked dentry gets " (deleted)". Pseudo files (pipes, sockets,
anonymous inodes, memfds, namespaces) have no path: their file system names
them with its ``d_op->d_dname`` function, which we recognise by its symbol
and imitate. Every walk is bounded and cycle-checked; dentries and mounts
are read once per resolver.
"""

from __future__ import annotations

from kpeek.kernel.layout import Layout
from kpeek.kernel.program import Kernel
from kpeek.records import record
from kpeek.textsafe import decode

MAX_DEPTH = 4096  # path components and mount crossings together
MAX_NAME = 4096


class PathError(ValueError):
    """A dentry or mount chain that makes no sense (a loop, a bad name length)."""


@record(frozen=True, slots=True)
class Dentry:
    parent: int
    name: bytes
    unhashed: bool
    d_op: int
    inode: int

    def is_root(self, address: int) -> bool:
        return self.parent == address


class PathResolver:
    """d_path for (vfsmount, dentry) pairs, relative to one root directory.

    ``root`` is a ``struct path``'s (mnt, dentry): the directory paths are
    relative to, as /proc shows them relative to the reader's root. With no
    root, paths go up to the top of the mount tree.
    """

    def __init__(self, kernel: Kernel, root: tuple[int, int] | None = None) -> None:
        btf = kernel.types
        self.kernel = kernel
        self.memory = kernel.memory
        self.root = root
        self._dentry = Layout(btf, "struct dentry")
        self._dentry_span = self._dentry.span("d_parent", "d_name.name", "d_name.len",
                                              "d_hash.pprev", "d_op", "d_inode")
        self._mount = Layout(btf, "struct mount")
        self._mount_span = self._mount.span("mnt_parent", "mnt_mountpoint", "mnt.mnt_root",
                                            "mnt_id")
        self._vfsmount_at = self._mount.off("mnt")
        self._d_dname_at = Layout(btf, "struct dentry_operations").off("d_dname")
        self._inode = Layout(btf, "struct inode")
        self._dentries: dict[int, Dentry] = {}
        self._mounts: dict[int, tuple[int, int, int, int]] = {}
        self._dname: dict[int, str | None] = {}
        self._paths: dict[tuple[int, int], str] = {}
        self.approximated = 0  # pseudo files named by a d_dname we do not know

    # -- reading -----------------------------------------------------------
    def dentry(self, address: int) -> Dentry:
        found = self._dentries.get(address)
        if found is None:
            d = self._dentry
            raw = self.memory.read(address, self._dentry_span)
            length = d.int(raw, "d_name.len")
            if length > MAX_NAME:
                raise PathError(f"dentry at 0x{address:x} has a name of {length} bytes")
            name_at = d.int(raw, "d_name.name")
            name = self.memory.read(name_at, length) if length else b""
            found = Dentry(d.int(raw, "d_parent"), name, d.int(raw, "d_hash.pprev") == 0,
                           d.int(raw, "d_op"), d.int(raw, "d_inode"))
            self._dentries[address] = found
        return found

    def mount(self, vfsmount: int) -> tuple[int, int, int, int]:
        """(parent vfsmount, mountpoint dentry, root dentry, mnt_id) of a vfsmount."""
        found = self._mounts.get(vfsmount)
        if found is None:
            m, at = self._mount, vfsmount - self._vfsmount_at
            raw = self.memory.read(at, self._mount_span)
            parent = m.int(raw, "mnt_parent")
            found = (parent + self._vfsmount_at if parent else 0, m.int(raw, "mnt_mountpoint"),
                     m.int(raw, "mnt.mnt_root"), m.int(raw, "mnt_id"))
            self._mounts[vfsmount] = found
        return found

    def mnt_id(self, vfsmount: int) -> int:
        return self.mount(vfsmount)[3]

    def _dname_function(self, d_op: int) -> str | None:
        """The name of ``d_op->d_dname`` ("pipefs_dname"), None when there is none."""
        if d_op not in self._dname:
            fn = int.from_bytes(self.memory.read(d_op + self._d_dname_at, 8), "little")
            name = None
            if fn:
                sym = self.kernel.symbols.lookup(fn) if self.kernel.symbols else None
                name = sym.name if sym is not None and sym.address == fn else "?"
            self._dname[d_op] = name
        return self._dname[d_op]

    def _read_cstring(self, address: int, limit: int = 64) -> str:
        raw = self.memory.read(address, limit) if address else b""
        return decode(raw.split(b"\0", 1)[0])

    # -- d_path ------------------------------------------------------------
    def path(self, vfsmount: int, dentry: int, ino: int) -> str:
        """The path /proc/PID/fd would show for an open file at (vfsmount, dentry).

        Raises MemoryReadError (unreadable object) or PathError (corrupt chain).
        """
        key = (vfsmount, dentry)
        found = self._paths.get(key)
        if found is None:
            found = self._special(vfsmount, dentry, ino)
            if found is None:
                found = self._walk(vfsmount, dentry)
            self._paths[key] = found
        return found

    def _special(self, vfsmount: int, address: int, ino: int) -> str | None:
        d = self.dentry(address)
        if not d.d_op or (d.is_root(address) and address == self.mount(vfsmount)[2]):
            return None
        fn = self._dname_function(d.d_op)
        if fn is None:
            return None
        name = decode(d.name)
        if fn == "pipefs_dname":
            return f"pipe:[{ino}]"
        if fn == "sockfs_dname":
            return f"socket:[{ino}]"
        if fn == "anon_inodefs_dname":
            return f"anon_inode:{name}"
        if fn == "pidfs_dname":
            return "anon_inode:[pidfd]"
        if fn == "simple_dname":
            return f"/{name} (deleted)"
        if fn == "ns_dname":
            return f"{self._ns_kind(d.inode)}:[{ino}]"
        self.approximated += 1  # dmabuf and friends: their own formats
        return f"{name}:[{ino}]"

    def _ns_kind(self, inode: int) -> str:
        """nsfs: i_private is the ns_common, whose ops name the kind ("net")."""
        btf = self.kernel.types
        private = int.from_bytes(
            self.memory.read(inode + self._inode.off("i_private"), 8), "little")
        ops = int.from_bytes(self.memory.read(
            private + Layout(btf, "struct ns_common").off("ops"), 8), "little")
        name = int.from_bytes(self.memory.read(
            ops + Layout(btf, "struct proc_ns_operations").off("name"), 8), "little")
        return self._read_cstring(name, 16)

    def _walk(self, vfsmount: int, address: int) -> str:
        """prepend_path: components up to the root, crossing mounts upwards."""
        first = self.dentry(address)
        deleted = first.unhashed and not first.is_root(address)
        parts: list[bytes] = []
        seen: set[tuple[int, int]] = set()
        mnt, dentry = vfsmount, address
        for _ in range(MAX_DEPTH):
            if self.root is not None and (mnt, dentry) == self.root:
                break
            if (mnt, dentry) in seen:
                raise PathError(f"dentry chain loops at 0x{dentry:x}")
            seen.add((mnt, dentry))
            parent_mnt, mountpoint, mnt_root, _ = self.mount(mnt)
            d = self.dentry(dentry)
            if dentry == mnt_root or d.is_root(dentry):
                if parent_mnt and parent_mnt != mnt:
                    mnt, dentry = parent_mnt, mountpoint
                    continue
                break  # the top of the mount tree, or a detached mount
            parts.append(d.name)
            dentry = d.parent
        else:
            raise PathError(f"path deeper than {MAX_DEPTH} at dentry 0x{address:x}")
        text = "/" + "/".join(decode(p) for p in reversed(parts))
        return text + " (deleted)" if deleted else text


def read_root(kernel: Kernel, fs_struct: int) -> tuple[int, int]:
    """(mnt, dentry) of ``fs_struct->root``: a task's root directory."""
    fs = Layout(kernel.types, "struct fs_struct")
    path = Layout(kernel.types, "struct path")
    raw = kernel.memory.read(fs_struct + fs.off("root"), path.size)
    return path.int(raw, "mnt"), path.int(raw, "dentry")

