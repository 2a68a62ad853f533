"""Which facts come from where on this kernel, and what is unavailable and why.

``kpeek doctor --explain-sources`` prints :func:`explain_sources`. Each answer
comes from trying: the shipped BPF objects are loaded (the verifier has the
last word), and the kernel's own BTF says which fields and helpers it has
(the same ones the BPF programs and the stack scan guard with CO-RE checks).
"""

from __future__ import annotations

import os

from kpeek.errors import KpeekError
from kpeek.records import record


@record(frozen=True, slots=True)
class FactSource:
    """One kind of fact and where kpeek gets it here (``source`` is
    "unavailable" when it cannot, and ``why`` says what is missing)."""

    fact: str
    source: str
    why: str = ""


@record(frozen=True, slots=True)
class KernelFeatures:
    """What the running kernel offers kpeek (from loading and from BTF)."""

    release: str
    snapshot_error: str | None  # why the BPF snapshot object does not load
    reader_error: str | None  # why the BPF memory reader does not load
    has_blocker: bool  # task_struct.blocker (6.16+)
    has_bpf_loop: bool  # bpf_loop and bpf_snprintf: stacks formatted in BPF
    refcount_field: str | None  # file.f_ref (6.13+) or file.f_count
    has_task_pt_regs: bool = False  # bpf_task_pt_regs (5.15+): system calls read in BPF


def _load_error(name: str) -> str | None:
    from kpeek.sources.bpf.loaded import bpf_object

    try:
        bpf_object(name)
    except KpeekError as e:
        return str(e).removesuffix("; use --source procfs").removesuffix(
            " or use --source procfs")
    return None


def _btf_features() -> tuple[bool, bool, str | None, bool]:
    from kpeek.kernel.btf import Kind, load_vmlinux_btf

    btf = load_vmlinux_btf()

    def has(struct: str, path: str) -> bool:
        try:
            btf.lookup(struct).offsetof(path)
        except KpeekError:
            return False
        return True

    func_ids = btf.find("bpf_func_id", (Kind.ENUM,))
    helpers = {e.name for e in func_ids.enumerators} if func_ids else set()
    loop = {"BPF_FUNC_loop", "BPF_FUNC_snprintf"} <= helpers
    refcount = next((f for f in ("f_ref", "f_count") if has("struct file", f)), None)
    pt_regs = "BPF_FUNC_task_pt_regs" in helpers and has("struct pt_regs", "orig_ax")
    return has("struct task_struct", "blocker"), loop, refcount, pt_regs


def kernel_features() -> KernelFeatures:
    """Probe this kernel (loads the BPF objects; reads BTF). Never raises a
    KpeekError: what fails is recorded as the reason a fact is missing."""
    release = os.uname().release
    snapshot_error = _load_error("snapshot")
    reader_error = _load_error("reader")
    try:
        blocker, loop, refcount, pt_regs = _btf_features()
    except KpeekError:  # no BTF: the load errors above already say so
        blocker, loop, refcount, pt_regs = False, False, None, False
    return KernelFeatures(release, snapshot_error, reader_error, blocker, loop, refcount,
                          pt_regs)


def explain_sources(k: KernelFeatures | None = None) -> list[FactSource]:
    """Where each kind of fact comes from on this kernel (see module doc)."""
    k = k or kernel_features()
    bpf, memory = k.snapshot_error is None, k.reader_error is None
    no_bpf = f"the BPF source does not load: {k.snapshot_error}"
    facts = [
        FactSource("processes and descriptor tables",
                   "BPF iterators (iter/task, iter/task_file)" if bpf else "/proc",
                   "" if bpf else no_bpf),
        FactSource("which descriptors share one open file",
                   "BPF (struct file addresses)" if bpf else "/proc (kcmp(2))"),
    ]
    if bpf:
        facts.append(FactSource("open-file reference counts, f_mode, file and task addresses",
                                f"BPF (file.{k.refcount_field or 'f_count'})"))
    else:
        facts.append(FactSource("open-file reference counts, f_mode, file and task addresses",
                                "unavailable", no_bpf))
    if bpf and k.has_bpf_loop:
        facts.append(FactSource("wait channels and kernel stacks",
                                "BPF (bpf_get_task_stack, formatted by bpf_snprintf)"))
    else:
        why = ("this kernel's BPF lacks bpf_loop (5.17+) or bpf_snprintf (5.13+)" if bpf
               else "")
        facts.append(FactSource("wait channels and kernel stacks",
                                "/proc (PID/wchan, PID/stack)", why))
    if bpf and k.has_task_pt_regs:
        facts.append(FactSource("the system call a sleeping task is in, and its arguments",
                                "BPF (bpf_task_pt_regs: the user registers saved at entry)"))
    else:
        facts.append(FactSource(
            "the system call a sleeping task is in, and its arguments", "/proc (PID/syscall)",
            "" if not bpf else "this kernel's BPF lacks bpf_task_pt_regs (5.15+) or is not "
            "x86-64"))
    facts.append(FactSource("file locks and who waits on them", "/proc/locks"))
    if not memory:
        facts.append(FactSource("the kernel lock (mutex, rwsem, semaphore) a D-state task "
                                "sleeps on", "unavailable",
                                f"kernel memory is not readable: {k.reader_error}"))
    elif k.has_blocker:
        facts.append(FactSource("the kernel lock (mutex, rwsem, semaphore) a D-state task "
                                "sleeps on", "task_struct.blocker, else a stack scan",
                                "the blocker is 0 for rwsems: their waiter record is "
                                "found on the task's kernel stack"))
    else:
        facts.append(FactSource("the kernel lock (mutex, rwsem, semaphore) a D-state task "
                                "sleeps on", "stack scan (the waiter record on the task's "
                                "kernel stack)", "this kernel has no task_struct.blocker "
                                "(6.16+)"))
    facts.append(FactSource("kernel memory (struct, list, rd, task)",
                            "BPF (bpf_probe_read_kernel)" if memory else "unavailable",
                            "" if memory else k.reader_error or ""))
    return facts
