"""BpfKernelMemory and task_addresses on the real kernel.

Without trusting any offset table, a task_struct is recognised by what we
put in it: a unique comm set with prctl(PR_SET_NAME), and the pid/tgid pair
that sits next to each other in every kernel's task_struct.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import threading
from collections.abc import Iterator

import pytest

from capabilities import require
from kpeek.kernel.memory import MemoryReadError

PR_SET_NAME = 15
TASK_STRUCT_SPAN = 16384  # task_struct is ~10 KiB: read generously


@pytest.fixture(autouse=True)
def _bpf() -> None:
    require("bpf")


def _set_comm(name: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) == 0


def _pid_tgid_offsets(blob: bytes, pid: int, tgid: int) -> set[int]:
    pattern = pid.to_bytes(4, "little") + tgid.to_bytes(4, "little")
    found, start = set(), 0
    while (i := blob.find(pattern, start)) >= 0:
        found.add(i)
        start = i + 1
    return found


@contextlib.contextmanager
def _extra_thread(name: str | None = None) -> Iterator[int]:
    """A thread of ours that sleeps until the block ends; yields its tid."""
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def worker() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=worker, name=name)
    t.start()
    try:
        ready.wait(10)
        yield tids[0]
    finally:
        done.set()
        t.join()


def test_task_addresses_cover_our_threads() -> None:
    from kpeek.sources.bpf.tasks import task_addresses

    with _extra_thread() as tid:
        addrs = task_addresses()
    assert os.getpid() in addrs and tid in addrs
    assert addrs[os.getpid()] != addrs[tid]
    assert all(a >= 1 << 63 for a in addrs.values())  # kernel half of the address space
    # Every thread of ours that /proc lists, BPF lists.
    assert {int(x) for x in os.listdir("/proc/self/task")} <= set(addrs) | {tid}


def test_reads_our_own_task_struct() -> None:
    from kpeek.sources.bpf.reader import BpfKernelMemory
    from kpeek.sources.bpf.tasks import task_addresses

    with open("/proc/self/comm", "rb") as f:
        old = f.read().strip()
    first, second = (b"kp" + secrets.token_hex(6).encode() for _ in range(2))
    try:
        _set_comm(first)
        address = task_addresses()[threading.get_native_id()]
        blob = BpfKernelMemory().read(address, TASK_STRUCT_SPAN)
        assert len(blob) == TASK_STRUCT_SPAN
        comm_at = blob.find(first + b"\0")
        assert comm_at > 0
        # The main thread's pid == tgid pair is in it, exactly once, before comm.
        offsets = _pid_tgid_offsets(blob[:comm_at], os.getpid(), os.getpid())
        assert len(offsets) == 1

        # A new comm is seen by a new reader (the old one caches pages).
        _set_comm(second)
        fresh = BpfKernelMemory().read(address + comm_at, 16)
        assert fresh.startswith(second + b"\0")
        uncached = BpfKernelMemory(cache=False).read(address + comm_at, len(second))
        assert uncached == second
    finally:
        _set_comm(old[:15])


def test_thread_task_struct_has_its_tid_and_our_tgid() -> None:
    from kpeek.sources.bpf.reader import BpfKernelMemory
    from kpeek.sources.bpf.tasks import task_addresses

    mem = BpfKernelMemory()
    main_addr = task_addresses()[os.getpid()]
    main_blob = mem.read(main_addr, TASK_STRUCT_SPAN)
    (pid_off,) = _pid_tgid_offsets(main_blob[:4096], os.getpid(), os.getpid()) or {None}
    assert pid_off is not None

    with _extra_thread() as tid:
        # A fresh reader: the thread's task_struct may sit in a slab page the
        # first reader cached before the thread existed.
        pair = BpfKernelMemory().read(task_addresses()[tid] + pid_off, 8)
    assert int.from_bytes(pair[:4], "little") == tid
    assert int.from_bytes(pair[4:], "little") == os.getpid()


@pytest.mark.parametrize(
    "address",
    [0, 0x1000, 0x7FFF_0000_0000, 0xDEAD_0000_0000_0000, 0xFFFF_FFFF_FFFF_F000],
)
def test_bad_address_is_a_clean_error(address: int) -> None:
    from kpeek.sources.bpf.reader import BpfKernelMemory

    with pytest.raises(MemoryReadError) as e:
        BpfKernelMemory().read(address, 8)
    assert e.value.address == address
    assert f"0x{address:x}" in str(e.value)


def test_read_spanning_pages_and_read_many() -> None:
    from kpeek.sources.bpf.reader import BpfKernelMemory
    from kpeek.sources.bpf.tasks import task_addresses

    address = task_addresses()[os.getpid()]
    cached, exact = BpfKernelMemory(), BpfKernelMemory(cache=False)
    # A range that straddles a page boundary reads the same both ways.
    start = (address // 4096 + 1) * 4096 - 5
    assert cached.read(start, 10) == exact.read(start, 10)
    results = cached.read_many([(address, 8), (0x10, 8), (address + 8, 0), (address, 64)])
    assert isinstance(results[1], MemoryReadError)
    assert results[0] == exact.read(address, 8) and results[2] == b""
    assert results[3][:8] == results[0]
    with pytest.raises(MemoryReadError):
        cached.read(-1, 8)
    with pytest.raises(MemoryReadError):
        cached.read((1 << 64) - 4, 8)


def test_without_capabilities_is_not_permitted(tmp_path) -> None:
    """Root with every capability dropped: one clean line, exit code 3."""
    import shutil
    import subprocess
    import sys

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    code = (
        "from kpeek.errors import KpeekError\n"
        "from kpeek.sources.bpf.reader import BpfKernelMemory\n"
        "try:\n    BpfKernelMemory()\n"
        "except KpeekError as e:\n    print(type(e).__name__, e.exit_code, e)\n"
    )
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    out = subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NotPermitted 3 "), out.stdout
    assert "root" in out.stdout and out.stdout.count("\n") == 1


def test_fields_at_btf_offsets_match_proc() -> None:
    """pid, tgid, comm and real_parent->tgid read at the offsets the kernel's
    BTF gives are what /proc says about a thread of ours and its parent."""
    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.sources.bpf.reader import BpfKernelMemory
    from kpeek.sources.bpf.tasks import task_addresses

    task = load_vmlinux_btf().lookup("struct task_struct")
    mem = BpfKernelMemory()
    with _extra_thread("kpeek-btf-rd") as tid:
        addr = task_addresses()[tid]
        u32 = lambda off: int.from_bytes(mem.read(addr + off, 4), "little")  # noqa: E731
        assert u32(task.offsetof("pid")) == tid
        assert u32(task.offsetof("tgid")) == os.getpid()
        comm = mem.read(addr + task.offsetof("comm"), 16).split(b"\0")[0]
        with open(f"/proc/self/task/{tid}/comm", "rb") as f:
            assert comm == f.read().rstrip(b"\n")
        parent = mem.read_u64(addr + task.offsetof("real_parent"))
        assert int.from_bytes(mem.read(parent + task.offsetof("tgid"), 4), "little") == os.getppid()


def test_task_addresses_include_every_parent() -> None:
    """Parents are listed even where the iterator hides them (pid 1 on a
    sandboxed kernel), and each address holds the right pid."""
    from kpeek.kernel.btf import load_vmlinux_btf
    from kpeek.sources.bpf.reader import BpfKernelMemory
    from kpeek.sources.bpf.tasks import task_addresses

    pid_at = load_vmlinux_btf().lookup("struct task_struct").offsetof("pid")
    mem = BpfKernelMemory()
    parents = set()  # listed before the walk, checked alive after it
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parents.add(int(f.read().rsplit(b")", 1)[1].split()[2]))
            except (FileNotFoundError, ProcessLookupError):
                continue
    parents.discard(0)
    addrs = task_addresses()
    live = {p for p in parents if os.path.exists(f"/proc/{p}")}
    assert live and live <= set(addrs)
    for p in live:
        assert int.from_bytes(mem.read(addrs[p] + pid_at, 4), "little") == p
