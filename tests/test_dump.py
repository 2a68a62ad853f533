"""Reading the lab's real dumps with no debuginfo: symbols from kallsyms in memory,
types from the BTF in memory, tasks from a walk; checked against the guest's
own /proc taken just before the dump."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kpeek.kernel.sched import state_letter
from kpeek.targets.dump import DumpKernel, open_dump
from lab.fixtures import LabDumps


def kpeek(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpeek", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module", params=["elf", "kdump"])
def dump(request, lab_dumps: LabDumps) -> tuple[DumpKernel, LabDumps]:
    """Each format of the same memory, opened once per module."""
    return open_dump(str(getattr(lab_dumps, request.param))), lab_dumps


def test_identity_from_vmcoreinfo(dump) -> None:
    k, lab = dump
    assert k.core.vmcoreinfo.release == lab.truth.release == lab.tree.version
    assert not k.live and str(lab.elf.parent) in k.origin


def test_symbols_match_the_guests_kallsyms(dump) -> None:
    k, lab = dump
    sample = lab.truth.symbols
    assert len(sample) > 500 and "init_task" in sample and "kpeek_bad_list" in sample
    wrong = {name: (hex(addr), k.symbols.address_of(name)) for name, addr in sample.items()
             if k.symbols.address_of(name) != addr}
    assert not wrong, f"{len(wrong)} of {len(sample)} differ: {list(wrong.items())[:5]}"
    # module symbols carry their module's name
    assert k.symbols.symbol("kpeek_take_a_then_b").module == "kpeek_abba"


def test_types_come_from_the_btf_in_memory(dump) -> None:
    k, lab = dump
    mutex = k.object("struct mutex", lab.truth.symbols["kpeek_lock_a"])
    # the mutex is held by the thread that took it first: owner is its task | flag bits
    owner = mutex.member("owner").member("counter").value_int()
    assert owner & (2**64 - 8) == lab.truth.scenario["kpeek_abba.task_a"]  # counter is signed


def test_task_walk_finds_every_guest_task(dump) -> None:
    k, lab = dump
    found = k.tasks.addresses()
    assert set(lab.truth.tasks) <= set(found)
    for pid, truth in lab.truth.tasks.items():
        task = k.object("struct task_struct", found[pid])
        comm = task.member("comm").value()
        if truth.comm.startswith("kworker/"):  # /proc adds "-" and the work queue's name
            assert truth.comm.startswith(comm)
        else:
            assert comm == truth.comm[:15]
        state = state_letter(task.member("__state").value_int(),
                             task.member("exit_state").value_int())
        if pid in lab.truth.pids.values() or truth.comm.startswith("kpeek_abba"):
            assert state == truth.state, (pid, truth)
    assert found[lab.truth.scenario["kpeek_abba.task_a_pid"]] == \
        lab.truth.scenario["kpeek_abba.task_a"]


def test_cli_verbs_on_the_dump(lab_dumps: LabDumps) -> None:
    core = str(lab_dumps.elf)
    truth = lab_dumps.truth
    sym = kpeek("-c", core, "sym", "init_task")
    assert sym.returncode == 0 and f"{truth.symbols['init_task']:x}" in sym.stdout
    task = kpeek("-c", core, "task", str(truth.pids["pipe_reader"]), "--json")
    assert task.returncode == 0, task.stderr
    assert json.loads(task.stdout)["comm"] == "cat"
    struct = kpeek("-c", core, "struct", "list_head", "kpeek_good_list")
    assert struct.returncode == 0 and "next = 0x" in struct.stdout
    dis = kpeek("-c", core, "dis", "kpeek_take_b_then_a")
    assert dis.returncode == 0 and "mutex_lock" in dis.stdout
    rd = kpeek("-c", core, "rd", "linux_banner")
    assert rd.returncode == 0 and "Linux" in rd.stdout


def test_list_walk_finds_the_reused_slot(lab_dumps: LabDumps) -> None:
    core, scenario = str(lab_dumps.kdump), lab_dumps.truth.scenario
    bad = kpeek("-c", core, "list", "kpeek_bad_list")
    assert bad.returncode == 1, bad.stderr
    assert "points to itself" in bad.stdout
    assert f"{scenario['kpeek_lists.reused']:x}" in bad.stdout
    good = kpeek("-c", core, "list", "kpeek_good_list")
    assert good.returncode == 0 and "3 entries" in good.stdout


def test_formats_agree_byte_for_byte(lab_dumps: LabDumps) -> None:
    elf, kdump = open_dump(str(lab_dumps.elf)), open_dump(str(lab_dumps.kdump))
    flat = open_dump(str(lab_dumps.flattened))
    assert elf.types.data == kdump.types.data == flat.types.data
    for name in ("init_task", "kpeek_bad_list", "jiffies"):
        address = elf.symbols.address_of(name)
        assert address == kdump.symbols.address_of(name) == flat.symbols.address_of(name)
        assert elf.memory.read(address, 256) == kdump.memory.read(address, 256)


def test_address_outside_the_dump(lab_dumps: LabDumps) -> None:
    done = kpeek("-c", str(lab_dumps.elf), "rd", "0xffffffff00000000")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not in dump" in done.stderr
