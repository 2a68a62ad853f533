"""The oracle: drgn with the kernel's full debuginfo (the -dbg package's vmlinux)
reads the same lab dump; kpeek, with no debuginfo at all, must agree with it on
tasks and their states, symbols, type layouts and the kernel log."""

from __future__ import annotations

import drgn
import pytest

from kpeek.kernel.printk import read_log
from kpeek.kernel.sched import state_letter
from kpeek.targets.dump import open_dump
from lab.fixtures import LabDumps
from lab.kernels import debug_vmlinux


@pytest.fixture(scope="module")
def oracle(lab_dumps: LabDumps) -> drgn.Program:
    prog = drgn.Program()
    prog.set_core_dump(str(lab_dumps.elf))
    prog.load_debug_info([str(debug_vmlinux(lab_dumps.tree))])
    return prog


def test_tasks_and_states_agree(lab_dumps: LabDumps, oracle) -> None:
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.sched import task_state_to_char

    theirs = {int(t.pid): (t.comm.string_().decode(), task_state_to_char(t))
              for t in for_each_task(oracle)}
    k = open_dump(str(lab_dumps.elf))
    ours = {}
    for pid, address in k.tasks.addresses().items():
        task = k.object("struct task_struct", address)
        ours[pid] = (task.member("comm").value(),
                     state_letter(task.member("__state").value_int(),
                                  task.member("exit_state").value_int()))
    theirs.setdefault(0, ours.get(0))  # drgn's for_each_task skips the idle task
    assert ours == theirs


def test_symbols_and_layouts_agree(lab_dumps: LabDumps, oracle) -> None:
    k = open_dump(str(lab_dumps.elf))
    for name in ("init_task", "jiffies", "prb", "modules", "_stext", "schedule",
                 "__start_BTF", "linux_banner", "tainted_mask", "panic_cpu"):
        assert k.symbols.address_of(name) == oracle.symbol(name).address, name
    for struct_name, members in (("task_struct", ("pid", "comm", "tasks", "thread.sp")),
                                 ("file", ("f_op", "f_pos", "f_inode")),
                                 ("mutex", ("owner", "wait_list"))):
        theirs = oracle.type(f"struct {struct_name}")
        ours = k.type(f"struct {struct_name}").resolve()
        assert ours.size == drgn.sizeof(theirs)
        for member in members:
            assert ours.offsetof(member) == drgn.offsetof(theirs, member), (struct_name, member)


def test_log_agrees(lab_dumps: LabDumps, oracle) -> None:
    from drgn.helpers.linux.printk import get_printk_records

    theirs = [(r.seq, r.timestamp, r.text.decode(errors="replace"))
              for r in get_printk_records(oracle)]
    k = open_dump(str(lab_dumps.elf))
    ours = [(r.seq, r.ts_nsec, r.text) for r in read_log(k)]
    assert len(ours) > 100 and ours == theirs


def test_vmlinux_btf_is_the_btf_in_memory(lab_dumps: LabDumps) -> None:
    """--vmlinux gives types from a vmlinux's .BTF: for this build, the same bytes
    the kernel keeps in memory."""
    vmlinux = str(debug_vmlinux(lab_dumps.tree))
    from_memory = open_dump(str(lab_dumps.elf))
    from_file = open_dump(str(lab_dumps.elf), vmlinux=vmlinux)
    assert from_file.types.data == from_memory.types.data


def test_old_vmcoreinfo_takes_symbols_from_vmlinux(lab_dumps: LabDumps, tmp_path) -> None:
    """A dump whose VMCOREINFO does not locate kallsyms (kernels before 5.19): the
    vmlinux's symbol table, moved by KERNELOFFSET, stands in."""
    import subprocess
    import sys

    old = tmp_path / "old.vmcore"
    data = bytearray(lab_dumps.elf.read_bytes())
    at = data.find(b"VMCOREINFO")
    end = data.find(b"\0", data.find(b"OSRELEASE=", at))
    data[at:end] = data[at:end].replace(b"SYMBOL(kallsyms_", b"SYMBOL(xallsyms_")
    old.write_bytes(data)
    del data

    def kpeek(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kpeek", "-c", str(old), *args],
                              capture_output=True, text=True, timeout=120)

    refused = kpeek("sym", "init_task")
    assert refused.returncode == 3 and "5.19" in refused.stderr and "--vmlinux" in refused.stderr
    vmlinux = str(debug_vmlinux(lab_dumps.tree))
    done = kpeek("--vmlinux", vmlinux, "sym", "init_task", "jiffies")
    assert done.returncode == 0, done.stderr
    for name in ("init_task", "jiffies"):
        assert f"{lab_dumps.truth.symbols[name]:x}" in done.stdout
    assert kpeek("--vmlinux", vmlinux, "sys").returncode == 0
