"""model.Task records from task_structs read in kernel memory.

One read per task_struct (up to the furthest field used, not its FPU
tail), one per cred, signal_struct, nsproxy and namespace, each cached:
threads share their process's signal_struct and most tasks share creds
and namespaces.
"""

from __future__ import annotations

import os

from kpeek.kernel.layout import Layout
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.pids import PidReader
from kpeek.kernel.program import Kernel
from kpeek.kernel.sched import state_letter
from kpeek.model import Namespace, Task
from kpeek.records import record
from kpeek.textsafe import decode

# /proc/PID/stat counts start_time in USER_HZ ticks.
NSEC_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
# nsproxy member -> (its struct, the /proc/PID/ns name), in /proc's order after pid
NSPROXY = (("mnt_ns", "struct mnt_namespace", "mnt"), ("net_ns", "struct net", "net"),
           ("ipc_ns", "struct ipc_namespace", "ipc"), ("uts_ns", "struct uts_namespace", "uts"),
           (None, "struct user_namespace", "user"),
           ("cgroup_ns", "struct cgroup_namespace", "cgroup"),
           ("time_ns", "struct time_namespace", "time"))
TASK_FIELDS = ("pid", "tgid", "comm", "__state", "state", "exit_state", "real_parent",
               "thread_pid", "signal", "real_cred", "nsproxy", "start_boottime", "files", "fs",
               "blocker", "flags", "worker_private", "set_child_tid")
# include/linux/sched.h (#defines, not in BTF)
PF_WQ_WORKER = 0x00000020
PF_KTHREAD = 0x00200000
TASK_COMM_SHOWN = 63  # /proc's 64-byte buffer for a task's name


@record(frozen=True, slots=True)
class RawTask:
    """The task_struct fields the walk uses, raw."""

    address: int
    pid: int
    tgid: int
    comm: bytes
    state: int
    exit_state: int
    real_parent: int
    thread_pid: int
    signal: int
    real_cred: int
    nsproxy: int
    start_boottime: int
    files: int
    fs: int
    blocker: int | None
    flags: int
    kthread: int  # struct kthread of a kernel thread (worker_private; set_child_tid before 5.17)


class TaskReader:
    """Reads task_structs and turns them into model Tasks."""

    def __init__(self, kernel: Kernel) -> None:
        btf = self.btf = kernel.types
        self.memory = kernel.memory
        self.pids = PidReader(btf, kernel.memory)
        t = self._task = Layout(btf, "struct task_struct")
        self._state = t.first("__state", "state")  # __state since 5.14
        self.span = t.span(*TASK_FIELDS)
        self.tasks_at = t.off("tasks")
        self._kthread = t.first("worker_private", "set_child_tid")
        self._kthread_struct = Layout(btf, "struct kthread")
        self._worker = Layout(btf, "struct worker")
        self._signal = Layout(btf, "struct signal_struct")
        self._pids_at = self._signal.off("pids")
        enum = btf.lookup("enum pid_type").resolve()
        self._pidtype = {e.name: e.value for e in enum.enumerators}
        self._cred = Layout(btf, "struct cred")
        self._nsproxy = Layout(btf, "struct nsproxy")
        self._ns_inum_at: dict[str, int | None] = {}
        self._cache: dict[tuple[str, int], tuple[int, ...]] = {}
        self.raw: dict[int, RawTask] = {}

    def read(self, address: int) -> RawTask:
        """The task_struct at ``address`` (cached; raises MemoryReadError)."""
        found = self.raw.get(address)
        if found is None:
            t, raw = self._task, self.memory.read(address, self.span)
            found = RawTask(
                address, t.int(raw, "pid"), t.int(raw, "tgid"), t.bytes(raw, "comm"),
                t.int(raw, self._state), t.int(raw, "exit_state"), t.int(raw, "real_parent"),
                t.int(raw, "thread_pid"), t.int(raw, "signal"), t.int(raw, "real_cred"),
                t.int(raw, "nsproxy"), t.int(raw, "start_boottime"), t.int(raw, "files"),
                t.int(raw, "fs"), t.int(raw, "blocker") if t.has("blocker") else None,
                t.int(raw, "flags"), t.int(raw, self._kthread),
            )  # fmt: skip
            self.raw[address] = found
        return found

    def _signal_pids(self, signal: int) -> tuple[int, ...]:
        """signal->pids[PIDTYPE_PID..PIDTYPE_SID] (struct pid addresses)."""
        key = ("signal", signal)
        if key not in self._cache:
            n = len(self._pidtype) - 1  # PIDTYPE_MAX is not a slot
            raw = self.memory.read(signal + self._pids_at, 8 * n) if signal else bytes(8 * n)
            self._cache[key] = tuple(int.from_bytes(raw[i * 8 : i * 8 + 8], "little")
                                     for i in range(n))
        return self._cache[key]

    def _signal_pid(self, signal: int, kind: str) -> int:
        return self._signal_pids(signal)[self._pidtype[kind]]

    def _cred_fields(self, cred: int) -> tuple[int, ...]:
        key = ("cred", cred)
        if key not in self._cache:
            c = self._cred
            raw = self.memory.read(cred, c.span("uid.val", "user_ns"))
            self._cache[key] = (c.int(raw, "uid.val"), c.int(raw, "user_ns"))
        return self._cache[key]

    def _inum(self, struct: str, ns: int) -> int:
        """``ns.inum`` of a namespace object (0 for none, or where this kernel lacks it)."""
        if struct not in self._ns_inum_at:
            try:
                self._ns_inum_at[struct] = Layout(self.btf, struct).off("ns.inum")
            except Exception:  # a kernel built without that namespace kind
                self._ns_inum_at[struct] = None
        at = self._ns_inum_at[struct]
        if not ns or at is None:
            return 0
        key = ("inum", ns)
        if key not in self._cache:
            self._cache[key] = (int.from_bytes(self.memory.read(ns + at, 4), "little"),)
        return self._cache[key][0]

    def _namespaces(self, rt: RawTask, pidns: int, user_ns: int) -> tuple[Namespace, ...]:
        out = [Namespace("pid", pidns)] if pidns else []
        for member, struct, kind in NSPROXY:
            if member is None:
                inum = self._inum(struct, user_ns)
            elif not rt.nsproxy or not self._nsproxy.has(member):
                continue
            else:
                raw = self.memory.read(rt.nsproxy + self._nsproxy.off(member), 8)
                inum = self._inum(struct, int.from_bytes(raw, "little"))
            if inum:
                out.append(Namespace(kind, inum))
        return tuple(out)

    def name(self, rt: RawTask) -> bytes:
        """The name /proc shows (proc_task_name): a kernel thread's full name, a
        workqueue worker's comm with "+desc" (busy) or "-desc"; else comm."""
        comm = rt.comm.split(b"\0", 1)[0]
        if not rt.flags & PF_KTHREAD or not rt.kthread:
            return comm
        k = self._kthread_struct
        try:
            raw = self.memory.read(rt.kthread, k.span("data", "full_name"))
            if rt.flags & PF_WQ_WORKER:
                w, worker = self._worker, k.int(raw, "data")
                wraw = self.memory.read(worker, w.span("pool", "desc", "current_work",
                                                       "rescue_wq"))
                desc = w.bytes(wraw, "desc").split(b"\0", 1)[0]
                rescuer = w.has("rescue_wq") and w.int(wraw, "rescue_wq")
                if rescuer and comm.startswith(b"kworker/R-"):
                    # 6.10+ (format_worker_id) names a rescuer "kworker/R-" and its
                    # workqueue's name; before, its comm was the name itself
                    wq = w.int(wraw, "rescue_wq")
                    wql = Layout(self.btf, "struct workqueue_struct")
                    name = self.memory.read(wq, wql.span("name"))[wql.off("name"):]
                    comm = b"kworker/R-" + name.split(b"\0", 1)[0]
                if w.int(wraw, "pool") and desc:
                    comm += (b"+" if w.int(wraw, "current_work") else b"-") + desc
            elif k.has("full_name") and (full := k.int(raw, "full_name")):
                comm = self.memory.read(full, TASK_COMM_SHOWN + 1).split(b"\0", 1)[0]
        except MemoryReadError:
            pass  # the short name is still right
        return comm[:TASK_COMM_SHOWN]

    def task(self, rt: RawTask, all_namespaces: bool) -> Task:
        """The model Task of a read task_struct (raises MemoryReadError, ValueError)."""
        pids = self.pids
        parent = self.read(rt.real_parent) if rt.real_parent else None
        pgrp = self._signal_pid(rt.signal, "PIDTYPE_PGID")
        session = self._signal_pid(rt.signal, "PIDTYPE_SID")
        tgid_pid = self._signal_pid(rt.signal, "PIDTYPE_TGID")
        parent_tgid = self._signal_pid(parent.signal, "PIDTYPE_TGID") if parent else 0
        ns_pid = pidns = 0
        ns = 0
        if rt.thread_pid:  # 0 once the task has been released
            ns_pid, ns = pids.own(rt.thread_pid)
            pidns = pids.namespace(ns)[1]
        uid, user_ns = self._cred_fields(rt.real_cred) if rt.real_cred else (0, 0)
        return Task(
            pid=rt.pid,
            tgid=rt.tgid,
            ppid=parent.tgid if parent and rt.thread_pid else 0,
            pgid=pids.global_nr(pgrp),
            sid=pids.global_nr(session),
            comm=decode(self.name(rt)),
            state=state_letter(rt.state, rt.exit_state),
            pidns=pidns,
            ns_pid=ns_pid,
            ns_tgid=pids.nr_in(tgid_pid, ns),
            ns_ppid=pids.nr_in(parent_tgid, ns),
            ns_pgid=pids.nr_in(pgrp, ns),
            ns_sid=pids.nr_in(session, ns),
            uid=uid,
            start_time=rt.start_boottime // NSEC_PER_TICK,
            namespaces=self._namespaces(rt, pidns, user_ns) if all_namespaces else (),
            blocker=rt.blocker,
            address=rt.address,
        )
