"""The QEMU lab itself: the guest built every scenario and the dumps are real."""

from __future__ import annotations

from lab.fixtures import LabDumps


def test_guest_built_the_deadlock(lab_dumps: LabDumps) -> None:
    truth = lab_dumps.truth
    a = truth.scenario["kpeek_abba.task_a_pid"]
    b = truth.scenario["kpeek_abba.task_b_pid"]
    assert truth.tasks[a].comm == "kpeek_abba_a" and truth.tasks[a].state == "D"
    assert truth.tasks[b].comm == "kpeek_abba_b" and truth.tasks[b].state == "D"
    assert "blocked for more than" in truth.dmesg


def test_guest_pinned_module_and_reused_slot(lab_dumps: LabDumps) -> None:
    truth = lab_dumps.truth
    assert truth.modules["kpeek_pin"][1] == 1  # the open file's reference
    assert "kpeek_pin" in truth.rmmod_pinned  # rmmod refused
    assert truth.scenario["kpeek_lists.reused"] == truth.scenario["kpeek_lists.b"]
    assert truth.tasks[truth.pids["pipe_reader"]].comm == "cat"
    assert truth.tasks[truth.pids["pipe_reader"]].state == "S"


def test_dumps_carry_vmcoreinfo(lab_dumps: LabDumps) -> None:
    for dump in (lab_dumps.elf, lab_dumps.kdump, lab_dumps.panic):
        with open(dump, "rb") as f:
            head = f.read(1 << 20)
        assert b"VMCOREINFO" in head and lab_dumps.truth.release.encode() in head, dump
    with open(lab_dumps.flattened, "rb") as f:
        assert f.read(16).startswith(b"makedumpfile")


def test_panic_dump_follows_an_oops_in_unloaded_module(lab_dumps: LabDumps) -> None:
    log = lab_dumps.panic_log
    assert "unable to handle page fault" in log
    assert "Kernel panic - not syncing: sysrq triggered crash" in log
    assert lab_dumps.panic.stat().st_size > 100 << 20
