"""A Snapshot taken by BPF iterators: every task, descriptor and open file in
two iterator runs (iter/task, iter/task_file) instead of several /proc reads
per task and per descriptor.

Besides what /proc shows, it knows what /proc cannot: the struct file and
inode addresses (so open-file identity is exact, not inferred), f_count,
f_mode, the task_struct address and ``task_struct.blocker``. Ids have the
same formats as the procfs source (Inode.id "major:minor:ino", OpenFile.id a
keyed hash), so the two can be compared.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from kpeek.errors import NotSupported, UsageError
from kpeek.ids import address_ids
from kpeek.kernel.sched import state_letter
from kpeek.model import Namespace, Snapshot, Task
from kpeek.sources import BLOCKED, proc_tasks
from kpeek.sources.background import Background
from kpeek.sources.bpf import hidden
from kpeek.sources.bpf.loaded import PER_PROCESS, bpf_iterator, exclusive, iterate
from kpeek.sources.consistent import make_consistent
from kpeek.textsafe import decode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kpeek.model import FileDescriptor, Inode, OpenFile, ProcessFile

SOURCE = "bpf"

# struct kpeek_task_rec and struct kpeek_file_rec in snapshot.bpf.c
TASK_REC = struct.Struct("<QQQ24Iq6QQ4I16s64siI")
FILE_REC = struct.Struct("<II6Q8IiIII")
# tgid, fd, file, then (at 84) cloexec, path_len: what a descriptor of a
# file seen before needs, in one unpack
_FILE_HEAD = struct.Struct("<IIQ68x?3xi")  # cloexec (0 or 1) as a bool
_ARGS = struct.Struct("<6I")
_run_lock = threading.Lock()
_TASK_PROGRAMS = ("snapshot_tasks",)
_FILE_PROGRAMS = ("snapshot_tasks", "snapshot_files")

_NS_KINDS = ("mnt", "net", "ipc", "uts", "user", "cgroup", "time")  # after pid, as in /proc
_NSEC_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _task_records(out: bytes) -> tuple[list[tuple], dict[int, tuple[str, ...]]]:
    """Task records, and the kernel stack text of each tid that has one."""
    if len(_comms) > 1 << 16:  # a long-lived process (kpeek serve) sees many names
        _comms.clear()
    records: list[tuple] = []
    stack_of: dict[int, tuple[str, ...]] = {}
    off, size, end = 0, TASK_REC.size, len(out)
    while off + size <= end:
        rec = TASK_REC.unpack_from(out, off)
        off += size
        nbytes = rec[-2]
        if nbytes > 0:
            # The kernel formatted each frame with %pB, as /proc/PID/stack does.
            text = out[off : off + nbytes].decode("ascii", "replace")
            stack_of[rec[3]] = tuple(text.splitlines())
            off += nbytes
        records.append(rec)
    return records, stack_of


_letters: dict[tuple[int, int], str] = {}
_wchans: dict[bytes, str] = {}
_comms: dict[bytes, str] = {}


def _task(rec: tuple, stack: tuple[str, ...] | None, stacks: bool | str, all_ns: bool) -> Task:
    address, blocker, start_boottime, pid, tgid, ppid, pgid, sid = rec[:8]
    ns_pid, ns_tgid, ns_ppid, ns_pgid, ns_sid, pidns, state, exit_state, uid = rec[8:17]
    ns_inums = rec[19:26]
    has_blocker = rec[26]
    nr, args, exec_start, cpu, tracer, has_syscall, has_cpu = (
        rec[27], rec[28:34], rec[34], rec[35], rec[36], rec[37], rec[38])  # fmt: skip
    comm, wchan_raw, has_stack = rec[39], rec[40], rec[42]
    # Thousands of tasks share a few states, wait channels and names: each
    # is decoded once per run.
    letter = _letters.get((state, exit_state))
    if letter is None:
        letter = _letters[state, exit_state] = state_letter(state, exit_state)
    if has_stack:
        wchan = _wchans.get(wchan_raw)
        if wchan is None:
            wchan = wchan_raw.split(b"\0", 1)[0].decode("ascii", "replace")
            if wchan.startswith("0x"):  # no symbol there: /proc/PID/wchan says "0"
                wchan = ""
            _wchans[wchan_raw] = wchan
    else:  # the kernel lacks the helpers (bpf_loop): ask /proc, as procfs does
        wchan, stack = _proc_wchan_stack(tgid, pid, stacks)
    namespaces: tuple[Namespace, ...] = ()
    if all_ns:
        kinds = (("pid", pidns), *zip(_NS_KINDS, ns_inums, strict=True))
        namespaces = tuple(Namespace(kind, inum) for kind, inum in kinds if inum)
    return Task(
        pid=pid,
        tgid=tgid,
        ppid=ppid,
        pgid=pgid,
        sid=sid,
        comm=_comms.get(comm) or _comms.setdefault(comm, decode(comm.split(b"\0", 1)[0])),
        state=letter,
        pidns=pidns,
        ns_pid=ns_pid,
        ns_tgid=ns_tgid,
        ns_ppid=ns_ppid,
        ns_pgid=ns_pgid,
        ns_sid=ns_sid,
        uid=uid,
        wchan=wchan or None,
        start_time=start_boottime // _NSEC_PER_TICK,
        namespaces=namespaces,
        kernel_stack=(stack or ()) if stacks is True or (stacks and letter == "D") else None,
        blocker=blocker if has_blocker else None,
        address=address,
        # A kernel without bpf_task_pt_regs: None, and the doctor asks /proc.
        syscall=((nr, *args) if nr >= 0 else (-1,)) if has_syscall else None,
        exec_start=exec_start,
        cpu=cpu if has_cpu else None,
        tracer=tracer,
    )


def _proc_wchan_stack(tgid: int, pid: int, stacks: bool) -> tuple[str, tuple[str, ...] | None]:
    base = f"/proc/{tgid}/task/{pid}"
    try:
        wchan = proc_tasks.read_bytes(f"{base}/wchan").decode("ascii", "replace")
        stack = proc_tasks.read_stack(base) if stacks else None
    except OSError:  # exited, or not permitted
        return "", None
    return ("" if wchan == "0" else wchan), stack


def dev_inode_id(dev: int, ino: int) -> str:
    return f"{dev >> 20}:{dev & 0xFFFFF}:{ino}"  # the kernel's MAJOR/MINOR of dev_t


def _file_records(
    notes: list[str], chunks: Iterable[bytes],
) -> tuple[list[FileDescriptor], dict[str, OpenFile], dict[str, Inode], set[str], int, bool]:
    """(descriptors, open files, inodes, the ids of those with a lock context,
    vanished, whether in (tgid, fd) order) from the iterator's output, read
    as it comes (``chunks``: a record cut between two is joined)."""
    # Here, not at the top: kpeek ps takes no file tables and starts faster.
    from kpeek.model import FileDescriptor, Inode, OpenFile
    from kpeek.sources.filekind import O_CLOEXEC, file_type

    fds: list[FileDescriptor] = []
    open_files: dict[str, OpenFile] = {}
    inodes: dict[str, Inode] = {}
    lock_contexts: set[str] = set()
    file_ids: dict[int, str] = {}
    ident = address_ids("ptr")  # keyed_id("ptr", address), as memwalk's (filemodel.OpenFile)
    # file_type depends on the file's format bits and on at most the first 11
    # characters of its path ("anon_inode:"): asked once per pair.
    types: dict[tuple[int, str], str] = {}
    devices: dict[int, int] = {}  # the kernel's dev_t -> os.makedev's
    vanished = readlinks = 0
    # The iterator walks tasks by pid and each table by fd: normally in order.
    in_order, last = True, -1
    size = FILE_REC.size
    unpack_full, unpack_head = FILE_REC.unpack_from, _FILE_HEAD.unpack_from
    append = fds.append
    rest = b""
    for out in chunks:
        if rest:
            out = rest + out
        off, end = 0, len(out)
        while off + size <= end:
            # Most descriptors share a file seen before: read just what they need.
            tgid, fd, file_addr, cloexec, path_len = unpack_head(out, off)
            if path_len > 0 and off + size + path_len > end:
                break  # its path is in the next chunk
            file_id = file_ids.get(file_addr)
            if file_id is None:
                (_, _, _, inode_addr, pos, isize, refcount, ino, f_mode, f_flags, dev, _rdev,
                 nlink, i_mode, mnt_id, _cloexec, _path_len, _pid, lock_context,
                 _pad) = unpack_full(out, off)  # fmt: skip
                if path_len >= 0:
                    path = out[off + size : off + size + path_len].decode(
                        "utf-8", "surrogateescape"
                    )
                else:  # bpf_d_path refused (path too long?): ask /proc, as procfs does
                    readlinks += 1
                    try:
                        path = decode(os.readlink(f"/proc/{tgid}/fd/{fd}".encode()))
                    except OSError:
                        vanished += 1
                        off += size + max(path_len, 0)
                        continue
                inode_id = f"{dev >> 20}:{dev & 0xFFFFF}:{ino}"  # dev_inode_id
                file_id = file_ids[file_addr] = ident(file_addr)
                # (id, inode, path, pos, flags, mnt_id, refcount, f_mode, address);
                # iter/task_file holds a reference of its own while visiting.
                open_files[file_id] = OpenFile(
                    file_id, inode_id, path, pos, f_flags & ~O_CLOEXEC, mnt_id,
                    refcount - 1 if refcount else refcount, f_mode, file_addr,
                )  # fmt: skip
                if inode_id not in inodes:
                    kind = types.get((i_mode >> 12, path[:11]))
                    if kind is None:
                        kind = types[i_mode >> 12, path[:11]] = file_type(i_mode, path)
                    device = devices.get(dev)
                    if device is None:
                        device = devices[dev] = os.makedev(dev >> 20, dev & 0xFFFFF)
                    # (id, dev, ino, type, nlink, size, address)
                    inodes[inode_id] = Inode(inode_id, device, ino, kind, nlink, isize, inode_addr)
                if lock_context:
                    lock_contexts.add(inode_id)
            off += size + (path_len if path_len > 0 else 0)
            append(FileDescriptor(tgid, fd, cloexec, file_id))
            if in_order:
                key = tgid << 32 | fd
                in_order, last = key > last, key
        rest = out[off:]
    if readlinks:
        notes.append(f"paths of {readlinks} open files read from /proc (bpf_d_path gave none)")
    return fds, open_files, inodes, lock_contexts, vanished, in_order


def _hand_over(chunks: Iterator[bytes], put: Callable[[bytes | None], None]) -> None:
    """Each chunk to ``put`` as the kernel fills it, then None (also when
    the walk failed: the reader's result() raises why)."""
    try:
        for chunk in chunks:
            put(chunk)
    finally:
        put(None)


class _Readers:
    """The walks of a whole-system snapshot besides the tasks', each read in
    a thread of its own while this one walks the tasks and decodes: the
    descriptors, handed over chunk by chunk (:meth:`chunks`) as the kernel
    fills each, and with ``rows`` lsof's cwd/rtd/txt/mem rows (procfiles:
    the kernel going through every memory map, then their parsing). The
    three programs write to no per-CPU buffer in common (an iterator program
    may be preempted on its CPU by another). :meth:`rows` waits for both
    threads and raises what either raised; the filter span must outlast it.
    """

    def __init__(self, tgids: list[int] | None, rows: bool) -> None:
        # Whatever either thread needs is imported before they start (see
        # sources.background).
        from queue import SimpleQueue

        from kpeek.model import FileDescriptor  # noqa: F401  (for _file_records)
        from kpeek.sources import filekind  # noqa: F401  (for _file_records)
        from kpeek.sources.bpf import procfiles

        queue: SimpleQueue[bytes | None] = SimpleQueue()
        self.chunks = lambda: iter(queue.get, None)
        files = bpf_iterator("snapshot", "snapshot_files").chunks()
        self._files = Background(_hand_over, files, queue.put)
        try:
            self._rows = Background(procfiles.read_parts, tgids) if rows else None
        except BaseException:
            self._files.join()
            raise

    def join(self) -> None:
        """Wait for both threads, whatever they raised."""
        for reader in (self._files, self._rows):
            if reader is not None:
                reader.join()

    def rows(self) -> Any:
        """procfiles.read_process_parts' answer, once both threads are done;
        None without ``rows`` or where this kernel refused their programs
        (fdfacts then reads the rows from /proc)."""
        self.join()
        self._files.result()
        try:
            return self._rows.result() if self._rows else None
        except NotSupported:
            return None


@contextlib.contextmanager
def filtered(tgids: list[int] | None, threads: bool, stacks: bool | str,
             programs: tuple[str, ...] | None = None) -> Iterator[None]:
    """The snapshot programs' filter set for the iterator runs inside (which
    run ``programs``, None: any; see loaded.bpf_object): only
    ``tgids`` (None: all), threads or not, which stacks. The programs' globals
    and filter map are one per process: one run at a time, the map emptied
    after. Kept programs (kept.py) are shared with other kpeek processes:
    the span holds their lock too, the run number is the last one's plus one
    whoever ran it (a file seen in another process's run is not "seen"), and
    filter entries a killed process left behind are dropped first."""
    few = tgids is not None and len(tgids) <= PER_PROCESS
    with _run_lock, exclusive("snapshot", programs, few) as obj:
        generation = _ARGS.unpack(obj.read_globals())[4] + 1
        for key in obj.keys("wanted", 4):
            obj.delete("wanted", key)
        for tgid in tgids or ():
            obj.update("wanted", tgid.to_bytes(4, "little"), b"\1")
        obj.set_globals(
            _ARGS.pack(tgids is not None, not threads, 2 if stacks == BLOCKED else bool(stacks),
                       True, generation & 0xFFFFFFFF, 0)
        )
        try:
            yield
        finally:
            for tgid in tgids or ():
                obj.delete("wanted", tgid.to_bytes(4, "little"))


def take_snapshot(
    pids: Iterable[int] | None = None,
    *,
    threads: bool = True,
    files: bool = True,
    stacks: bool | str = False,
    all_namespaces: bool = False,
    process_files: bool = False,
) -> Snapshot:
    """Tasks (and, with ``files``, descriptor tables) of ``pids`` or of all, via BPF.

    ``process_files``: also lsof's cwd/rtd/txt/mem rows (Snapshot.
    process_files, a ProcessFileTable of the processes BPF could give them
    for; sources.fdfacts.enrich reads the others from /proc). Their
    iterators walk every memory map while this thread decodes the tables.

    ``pids`` are thread-group ids; one that names no process raises
    UsageError. Raises NotPermitted (not root) or NotSupported (no BTF, no
    clang, the verifier refused) so that the "auto" source can fall back to
    procfs. Tasks that exit during the walk are simply absent; processes the
    iterators do not visit are read from /proc (see hidden.py) and named in
    the notes. Stacks and wchan are
    formatted by the kernel itself (%pB, %ps), exactly as /proc prints them;
    ``stacks=BLOCKED`` formats only the stacks of tasks in D state (the
    doctor's need: every other task's wait channel says enough).
    """
    tgids = sorted(set(pids)) if pids is not None else None
    if tgids is not None:
        missing = [p for p in tgids if not os.path.exists(f"/proc/{p}")]
        if missing:
            raise UsageError(f"no such process: {', '.join(map(str, missing))}")
        if len(tgids) > 65536:
            tgids = None  # more than the filter map holds: take all, filter below
    notes: list[str] = []
    listed_before = hidden.proc_pids() if tgids is None else []
    fds: list[FileDescriptor] = []
    open_files: dict[str, OpenFile] = {}
    inodes: dict[str, Inode] = {}
    lock_contexts: set[str] | None = None  # without files: nothing to tell
    vanished, in_order = 0, True
    # A whole-system walk of the descriptors (or of many processes') is read
    # in a thread of its own while this one decodes it, and the process rows'
    # two walks in another (see _Readers); a few processes' are quick.
    whole = files and (tgids is None or len(tgids) > PER_PROCESS)
    rows = process_files and whole
    # The programs it runs, loaded alone where nothing is kept (see
    # loaded.bpf_object): kpeek ps the task iterator; kpeek files PID the
    # descriptors too (the process rows of a few come from /proc: fdfacts);
    # a whole-system snapshot with files (the doctor's, which may ask for
    # lock_layout) or with the process rows all.
    programs = _FILE_PROGRAMS if files else _TASK_PROGRAMS
    if (files and tgids is None) or rows:
        programs = None
    with filtered(tgids, threads, stacks, programs):
        # The descriptor walk first: it runs while this thread walks the tasks
        # (the programs write to no per-CPU buffer in common).
        reader = _Readers(tgids, rows) if whole else None
        try:
            task_out = iterate("snapshot", "snapshot_tasks", tgids)
            file_chunks: Iterable[bytes] = (
                reader.chunks() if reader else (iterate("snapshot", "snapshot_files", tgids),)
                if files else ()
            )
            records, stack_of = _task_records(task_out)
            if files:
                fds, open_files, inodes, lock_contexts, vanished, in_order = _file_records(
                    notes, file_chunks
                )
            del task_out, file_chunks
            wanted = set(pids) if pids is not None else None
            tasks = [
                _task(rec, stack_of.get(rec[3]), stacks, all_namespaces)
                for rec in records
                if wanted is None or rec[4] in wanted
            ]
            if records and not records[0][-1]:
                notes.append(
                    "wait channels and kernel stacks read from /proc: this kernel's BPF lacks "
                    "bpf_loop (5.17+) or bpf_snprintf (5.13+)"
                )
            if wanted is not None:
                fds = [d for d in fds if d.tgid in wanted]
            # Processes /proc listed before the walk (or that were asked for) and
            # still lists, which the iterators did not visit.
            unseen = hidden.hidden_pids(
                listed_before if wanted is None else wanted, {rec[4] for rec in records}
            )
            if unseen:
                extra = hidden.from_procfs(
                    unseen, fds, open_files,
                    threads=threads, files=files, stacks=stacks, all_namespaces=all_namespaces,
                )  # fmt: skip
                tasks += extra.tasks
                fds += extra.fds
                open_files.update(extra.open_files)
                for inode_id, inode in extra.inodes.items():
                    inodes.setdefault(inode_id, inode)
                notes += extra.notes
                in_order = False
                if extra.fds:  # read from /proc, which does not tell
                    lock_contexts = None
            tasks.sort(key=lambda t: (t.tgid, t.pid != t.tgid, t.pid))
            if not in_order:
                fds.sort(key=lambda d: (d.tgid, d.fd))
        except BaseException:
            if reader:  # never left reading; what went wrong here is the error
                reader.join()
            raise
        parts = reader.rows() if reader else None
    # A process that forked between the task walk and the file walk has
    # descriptors but no task: left out and counted (see consistent.py).
    table: Sequence[ProcessFile] = ()
    if parts is not None:
        from kpeek.filemodel import ProcessFileTable

        table = ProcessFileTable(parts[0])
    return make_consistent(Snapshot(
        source=SOURCE,
        tasks=tuple(tasks),
        fds=tuple(fds),
        open_files=open_files,
        inodes=inodes,
        vanished=vanished,
        notes=tuple(notes),
        process_files=table,
        lock_contexts=None if lock_contexts is None else frozenset(lock_contexts),
    ))
