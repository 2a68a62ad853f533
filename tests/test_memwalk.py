"""The memory-walk snapshot against the /proc snapshot, on real process families.

The memory source reads task_structs, pid numbers, descriptor tables,
struct files, inodes, dentries and mounts through the live BPF reader, as it
would read them in a crash dump. On the families' sleeping processes it must
agree with /proc on every task fact, each descriptor, its close-on-exec bit,
each open file's path, offset and flags, the inodes, and which descriptors
share one open file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capabilities import require
from kpeek.errors import UsageError
from kpeek.ids import show_pointer
from kpeek.model import Snapshot
from kpeek.textsafe import decode
from scenarios import PIPE_FORK_DUP2, children_of, family
from test_bpf_snapshot import (
    PID_NAMESPACE,
    SOCKETS_MEMFD_CLOEXEC,
    STOPPED_AND_ZOMBIE,
    _file_facts,
    _partition,
    _task_facts,
    _wait_sleeping,
)

pytestmark = pytest.mark.timeout(90)

# File kinds named by their file system (d_dname) rather than by a path:
# eventfd, epoll, inotify, pidfd, a namespace file; a directory; a file in
# a deleted directory; a tmpfs mounted in a mount namespace of its own.
NAMED_KINDS = """
import ctypes, select, subprocess, tempfile
libc = ctypes.CDLL(None, use_errno=True)
ev = os.eventfd(0)
ep = select.epoll()
ino = libc.inotify_init1(0)
assert ino >= 0
pidfd = os.pidfd_open(os.getpid())
netns = os.open("/proc/self/ns/net", os.O_RDONLY)
here = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
top = tempfile.mkdtemp(prefix="kpeek-gone-")
gone = os.open(top + "/inner", os.O_RDWR | os.O_CREAT, 0o600)
os.unlink(top + "/inner")
os.rmdir(top)
mnt = tempfile.mkdtemp(prefix="kpeek-mnt-")
subprocess.run(["mount", "-t", "tmpfs", "kpeek", mnt], check=True)
os.makedirs(mnt + "/a/b")
deep = os.open(mnt + "/a/b/c", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
os.write(deep, b"1234567")
os.lseek(here, 0, os.SEEK_SET)
report(pid=os.getpid(), ev=ev, ep=ep.fileno(), ino=ino, pidfd=pidfd, netns=netns, here=here,
       gone=gone, deep=deep, mnt=mnt)
"""


@pytest.fixture(autouse=True)
def _bpf() -> None:
    require("bpf")


def _memory(tgids: list[int] | None, **kwargs) -> Snapshot:
    from kpeek.sources import memwalk
    from kpeek.targets.live import open_live

    # A fresh reader: its page cache starts empty, so it sees the kernel now.
    return memwalk.take_snapshot(open_live(), tgids, **kwargs)


def _assert_agree(tgids: list[int], sleeping: list[int] | None = None) -> Snapshot:
    from kpeek.sources import procfs

    _wait_sleeping(tgids if sleeping is None else sleeping)
    m = _memory(tgids, all_namespaces=True)
    p = procfs.take_snapshot(tgids, all_namespaces=True)
    assert m.source == "memory" and m.notes == ()
    tm, tp = _task_facts(m), _task_facts(p)
    assert tm == tp, {pid: (tm[pid], tp.get(pid)) for pid in tm if tm[pid] != tp.get(pid)}
    fm, fp = _file_facts(m), _file_facts(p)
    assert fm == fp, {k: (fm.get(k), fp.get(k)) for k in fm.keys() | fp.keys()
                      if fm.get(k) != fp.get(k)}
    assert _partition(m) == _partition(p)
    assert {d.tgid for d in m.fds} == {t.tgid for t in p.tasks if os.listdir(f"/proc/{t.tgid}/fd")}
    return m


def _agrees_with_bpf(m: Snapshot, tgids: list[int]) -> None:
    """Facts /proc cannot give (addresses, refcounts, f_mode) as BPF reads them."""
    from kpeek.sources.bpf import snapshot as bpf

    b = bpf.take_snapshot(tgids)
    assert {t.pid: (t.address, t.blocker) for t in m.tasks} == \
        {t.pid: (t.address, t.blocker) for t in b.tasks}
    facts = {(d.tgid, d.fd): (f.address, f.refcount, f.f_mode, m.inodes[f.inode].address)
             for d in m.fds for f in [m.open_files[d.open_file]]}
    assert facts == {(d.tgid, d.fd): (f.address, f.refcount, f.f_mode, b.inodes[f.inode].address)
                     for d in b.fds for f in [b.open_files[d.open_file]]}
    # One struct file, one id, in both sources: the keyed hash that
    # show_pointer shows for its address (filemodel.OpenFile).
    assert set(m.open_files) == set(b.open_files)
    assert all(show_pointer(f.address) == "#" + f.id for f in m.open_files.values())


def test_pipe_fork_dup2_family() -> None:
    with family(PIPE_FORK_DUP2) as fam:
        info = fam.info
        tgids = [info["parent"], info["child"]]
        try:
            m = _assert_agree(tgids)
            _agrees_with_bpf(m, tgids)
            (w,) = [d for d in m.fds if (d.tgid, d.fd) == (info["parent"], info["w"])]
            assert m.open_files[w.open_file].refcount == 3  # no iterator holds one here
            assert m.open_files[w.open_file].path.startswith("pipe:[")
        finally:
            os.unlink(info["path"])


def test_sockets_memfd_cloexec_deleted_thread_family() -> None:
    with family(SOCKETS_MEMFD_CLOEXEC) as fam:
        info = fam.info
        tgids = [info["parent"], info["child"]]
        m = _assert_agree(tgids)
        _agrees_with_bpf(m, tgids)
        facts = _file_facts(m)
        assert facts[(info["parent"], info["s1"])][1].startswith("socket:[")
        assert facts[(info["parent"], info["memfd"])][1] == "/memfd:kpeek-memfd (deleted)"
        assert facts[(info["parent"], info["gone"])][1].endswith(" (deleted)")
        assert len([t for t in m.tasks if t.tgid == info["parent"]]) == 2


def test_pid_namespace_family() -> None:
    with family(PID_NAMESPACE, prefix=("unshare", "--pid", "--fork")) as fam:
        (init,) = children_of(fam.pid)
        (child,) = children_of(init)
        m = _assert_agree([fam.pid, init, child])
        by_pid = {t.pid: t for t in m.tasks}
        assert by_pid[init].ns_pid == 1 and by_pid[child].ns_ppid == 1
        assert by_pid[init].pidns != by_pid[fam.pid].pidns


def test_stopped_and_zombie_family() -> None:
    with family(STOPPED_AND_ZOMBIE) as fam:
        info = fam.info
        m = _assert_agree([info["parent"], info["stopped"], info["zombie"]], [info["parent"]])
        states = {t.pid: t.state for t in m.tasks}
        assert states[info["stopped"]] == "T" and states[info["zombie"]] == "Z"


def test_pseudo_files_directories_and_mounts() -> None:
    with family(NAMED_KINDS, prefix=("unshare", "--mount", "--propagation", "private")) as fam:
        info = fam.info
        m = _assert_agree([info["pid"]])
        paths = {fd: path for (_, fd), (_, path, *_rest) in _file_facts(m).items()}
        assert paths[info["ev"]] == "anon_inode:[eventfd]"
        assert paths[info["ep"]] == "anon_inode:[eventpoll]"
        assert paths[info["ino"]] == "anon_inode:inotify"
        assert paths[info["netns"]].startswith("net:[")
        assert paths[info["here"]] == "/"
        assert paths[info["gone"]].endswith("/inner (deleted)")
        assert paths[info["deep"]] == info["mnt"] + "/a/b/c"  # crosses the tmpfs mount


def test_filters_missing_pids_and_unreadable_memory() -> None:
    """threads=False and files=False; an unknown pid is a UsageError; an
    unreadable struct file is skipped and counted, the rest still comes."""
    from kpeek.kernel.memory import MemoryReadError
    from kpeek.sources import memwalk
    from kpeek.targets.live import open_live

    with family(SOCKETS_MEMFD_CLOEXEC) as fam:
        parent = fam.info["parent"]
        _wait_sleeping([parent])
        leaders = _memory([parent], threads=False, files=False)
        assert [t.pid for t in leaders.tasks] == [parent] and leaders.fds == ()
        with pytest.raises(UsageError, match="no such process"):
            _memory([2**22 + 12345])
        whole = _memory([parent])
        (bad,) = [f.address for d in whole.fds if d.fd == fam.info["memfd"]
                  for f in [whole.open_files[d.open_file]]]

        kernel = open_live()
        real = kernel.memory

        class Holey:
            def read(self, address: int, size: int) -> bytes:
                if address <= bad < address + size:
                    raise MemoryReadError(address, size, "not in this test's memory")
                return real.read(address, size)

        kernel.memory = Holey()
        holey = memwalk.take_snapshot(kernel, [parent])
        assert {d.fd for d in holey.fds} == {d.fd for d in whole.fds} - {fam.info["memfd"]}
        assert any(n.startswith("1 open file skipped") for n in holey.notes), holey.notes


def test_whole_system_walk_sees_every_stable_process() -> None:
    from kpeek.sources import memwalk
    from kpeek.targets.live import open_live

    before = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    m = memwalk.take_snapshot(open_live(), files=False)
    after = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    assert before & after <= {t.tgid for t in m.processes()}
    assert 0 not in {t.pid for t in m.tasks}  # the idle task is not a process
    # Names as /proc shows them: kernel threads' full names, rescuers by their
    # workqueue; a busy worker's "+desc"/"-desc" changes by the moment, so not those.
    for t in m.tasks:
        try:
            shown = decode(Path(f"/proc/{t.tgid}/task/{t.pid}/comm").read_bytes()[:-1])
        except OSError:
            continue  # gone since
        if not shown.startswith("kworker/") or shown.startswith("kworker/R-"):
            assert t.comm == shown, (t.pid, t.comm, shown)
    assert any(len(t.comm) > 15 for t in m.tasks)  # longer than task_struct.comm holds


def test_ps_and_files_verbs_with_the_memory_source(capsys) -> None:
    """`--source memory` end to end: the verbs print what the walk read."""
    import json

    from kpeek.cli import main

    with family(PIPE_FORK_DUP2) as fam:
        info = fam.info
        parent, child = info["parent"], info["child"]
        try:
            _wait_sleeping([parent, child])
            assert main(["ps", "--json", "-t", "-p", str(parent), "--source", "memory"]) == 0
            doc = json.loads(capsys.readouterr().out)
            assert doc["source"] == "memory"
            assert [(t["pid"], t["ppid"], t["state"]) for t in doc["tasks"]] == \
                [(parent, os.getpid(), "S")]
            assert main(["files", "--json", str(parent), str(child), "--source", "memory"]) == 0
            doc = json.loads(capsys.readouterr().out)
            text = json.dumps(doc)
            assert doc["source"] == "memory" and info["path"] in text
            assert main(["files", str(child), "--source", "memory"]) == 0
            out = capsys.readouterr().out
            assert "pipe:[" in out and "source: memory" in out
        finally:
            os.unlink(info["path"])


def _where(stacks: dict) -> dict:
    """Names to addresses: the kernel names an aliased address (__do_sys_pause,
    __ia32_sys_pause) by its table order, kpeek by its own preference."""
    from kpeek.kernel.symbols import load_kallsyms

    syms = load_kallsyms()

    def at(frame: str) -> int:
        name, _, rest = frame.partition("+")
        return syms.address_of(name) + int(rest.split("/")[0] or "0", 16)

    return {pid: (at(w), tuple(map(at, stack))) for pid, (w, stack) in stacks.items()}


def test_stacks_and_wchan_unwound_from_memory() -> None:
    """ORC unwinding in memory gives the stacks and wait channels /proc prints."""
    from kpeek.sources import procfs

    with family(PIPE_FORK_DUP2) as fam:
        tgids = [fam.info["parent"], fam.info["child"]]
        try:
            _wait_sleeping(tgids)
            m = _memory(tgids, stacks=True, files=False)
            p = procfs.take_snapshot(tgids, stacks=True, files=False)
            mine = {t.pid: (t.wchan, t.kernel_stack) for t in m.tasks}
            assert _where(mine) == _where({t.pid: (t.wchan, t.kernel_stack) for t in p.tasks})
            assert all(w and stack for w, stack in mine.values())
            plain = _memory(tgids, files=False, wchan=True)
            assert {t.pid: (t.wchan, t.kernel_stack) for t in plain.tasks} == \
                {pid: (w, None) for pid, (w, _) in mine.items()}
        finally:
            os.unlink(fam.info["path"])


@pytest.mark.timeout(90)
def test_doctor_on_a_walked_kernel_reads_its_locks_in_that_kernel() -> None:
    """diagnose() given a Kernel (as for a dump) takes every fact from it: the
    walked snapshot, and the i_rwsem edge from that kernel's memory, with no
    live /proc reads of lock, FUSE or child waits (a dump's pids are not ours)."""
    from fuse_scenarios import fuse_mount, in_fuse_write, state, wait_for
    from kpeek.diagnose.findings import diagnose
    from kpeek.sources import memwalk
    from kpeek.targets.live import open_live

    require("fuse")
    write = "f = open({path!r}, 'w'); f.write('x'); f.flush()"
    with fuse_mount("block") as mnt:
        a = mnt.spawn(write.format(path=mnt.path("a")))
        wait_for(lambda: in_fuse_write(a.pid), 15, "A in FUSE write")
        b = mnt.spawn(f"import os; os.truncate({mnt.path('a')!r}, 0)")
        wait_for(lambda: state(b.pid) == "D", 15, "B in D state")
        kernel = open_live()
        snap = memwalk.take_snapshot(kernel, [a.pid, b.pid], stacks=True)  # a busy host
        diag = diagnose(snap, kernel=kernel, kernel_log=False, min_sleep=0)
        (edge,) = [e for e in diag.graph.edges if e.waiter == f"task:{b.pid}"]
        assert edge.kind == "rwsem" and edge.holder == f"task:{a.pid}"
        assert edge.resource == f"the i_rwsem of {mnt.path('a')}"
        assert not [e for e in diag.graph.edges if e.kind == "fuse"]
        assert any("not seen in a dump" in n for n in diag.notes)


def test_corrupt_objects_are_skipped_and_counted() -> None:
    """Kernel memory as a corrupted kernel (or a freed-and-reused slab slot)
    would show it: a dentry chain that loops and an fd table that claims a
    billion slots. Each costs only its own file or table, named in the notes."""
    from kpeek.kernel.fdtable import FileReader
    from kpeek.kernel.layout import Layout
    from kpeek.sources import memwalk
    from kpeek.targets.live import open_live

    with family(PIPE_FORK_DUP2) as fam:
        info = fam.info
        parent, child = info["parent"], info["child"]
        try:
            _wait_sleeping([parent, child])
            whole = _memory([parent, child])
            kernel = open_live()
            real = kernel.memory
            (shared,) = [whole.open_files[d.open_file].address for d in whole.fds
                         if (d.tgid, d.fd) == (parent, info["shared"])]
            file_dentry = FileReader(kernel).file(shared).dentry
            d = Layout(kernel.types, "struct dentry")
            parent_dentry = d.int(real.read(file_dentry, d.size), "d_parent")
            fdt_at = Layout(kernel.types, "struct files_struct").off("fdt")
            files = Layout(kernel.types, "struct task_struct").off("files")
            (child_task,) = [t.address for t in whole.tasks if t.pid == child]
            files_struct = int.from_bytes(real.read(child_task + files, 8), "little")
            fdt = int.from_bytes(real.read(files_struct + fdt_at, 8), "little")
            patches = {  # address -> bytes seen there instead
                parent_dentry + d.off("d_parent"): file_dentry.to_bytes(8, "little"),
                fdt + Layout(kernel.types, "struct fdtable").off("max_fds"):
                    (1 << 30).to_bytes(4, "little"),
            }

            class Corrupt:
                def read(self, address: int, size: int) -> bytes:
                    data = bytearray(real.read(address, size))
                    for at, value in patches.items():
                        if address <= at and at + len(value) <= address + size:
                            data[at - address : at - address + len(value)] = value
                    return bytes(data)

            kernel.memory = Corrupt()
            bad = memwalk.take_snapshot(kernel, [parent, child])
            assert not bad.fds_of(child)  # its table claimed 2**30 slots
            # The three open files of the path whose dentry chain loops are lost
            looping = {(d.tgid, d.fd) for d in whole.fds if d.tgid == parent
                       and whole.open_files[d.open_file].path == info["path"]}
            assert len(looping) == 3
            assert {(d.tgid, d.fd) for d in bad.fds} == \
                {(d.tgid, d.fd) for d in whole.fds if d.tgid == parent} - looping
            assert any(n.startswith("1 descriptor table skipped") for n in bad.notes)
            assert any(n.startswith("3 open files skipped") and "loops" in n for n in bad.notes)
        finally:
            os.unlink(info["path"])
