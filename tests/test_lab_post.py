"""Post-mortem verbs on the lab's real dumps (Debian 6.1, no vmlinux): bt from
ORC and the CPU notes, mod, kmem and shell, held against what the guest said
before the dump and against drgn reading the same dump with the -dbg vmlinux."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kpeek.cli import main
from lab.fixtures import LabDumps
from lab.kernels import debug_vmlinux

KERNEL_HALF = 1 << 63


def run_json(capsys, argv: list[str]) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def oracle(lab_dumps: LabDumps):
    """drgn with the full debuginfo of the same kernel, on the same dump."""
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(str(lab_dumps.elf))
    prog.load_debug_info([str(debug_vmlinux(lab_dumps.tree))])
    return prog


def in_kernel_text(prog, pc: int) -> bool:
    """A kernel or module code address (drgn's unwind also ends in user space)."""
    if pc < KERNEL_HALF:
        return False
    try:
        prog.symbol(pc)
    except LookupError:
        return any(m.address_range[0] <= pc < m.address_range[1] for m in prog.modules()
                   if m.address_range is not None)
    return True


def frame_addresses(frames: list[str], symbols) -> list[int]:
    out = []
    for frame in frames:
        m = re.match(r"([^+ ]+)\+0x([0-9a-f]+)/", frame)
        assert m, frame
        out.append(symbols[m[1]] + int(m[2], 16))
    return out


def kernel_symbols(capsys, dump, names: set[str]) -> dict[str, int]:
    doc = run_json(capsys, ["-c", str(dump), "sym", *sorted(names)])
    return {s["query"]: int(s["address"], 16) for s in doc["symbols"]}


@pytest.mark.timeout(600)
def test_bt_on_dump_matches_drgn_with_debuginfo(lab_dumps: LabDumps, oracle, capsys):
    t = lab_dumps.truth
    pids = [t.scenario["kpeek_abba.task_a_pid"], t.scenario["kpeek_abba.task_b_pid"],
            t.pids["sleeper"], t.pids["pipe_reader"]]
    doc = run_json(capsys, ["-c", str(lab_dumps.elf), "bt", *map(str, pids)])
    stacks = {s["pid"]: s["frames"] for s in doc["stacks"]}
    names = {re.match(r"[^+ ]+", f)[0] for frames in stacks.values() for f in frames}
    symbols = kernel_symbols(capsys, lab_dumps.elf, names)
    for pid in pids:
        frames = stacks[pid]
        assert not any(f.startswith("?") or f.startswith("(") for f in frames), frames
        ours = frame_addresses(frames, symbols)
        theirs: list[int] = []
        for frame in oracle.stack_trace(pid):  # inlined frames repeat their pc
            if in_kernel_text(oracle, frame.pc) and (not theirs or theirs[-1] != frame.pc):
                theirs.append(frame.pc)
        assert ours == theirs, (pid, frames)
    for pid, module_frame in ((pids[0], "kpeek_take_a_then_b+0x35/"),
                              (pids[1], "kpeek_take_b_then_a+0x35/")):
        assert any(f.startswith("__mutex_lock") for f in stacks[pid])
        (frame,) = [f for f in stacks[pid] if f.startswith(module_frame)]
        # named as the kernel's own hung-task report named it (size capped at text end)
        assert frame.endswith(" [kpeek_abba]") and frame in t.dmesg, frame
    assert any(f.startswith("pipe_read+") for f in stacks[t.pids["pipe_reader"]])


@pytest.mark.timeout(600)
def test_bt_on_panic_dump_unwinds_the_panicking_cpu(lab_dumps: LabDumps, capsys):
    doc = run_json(capsys, ["-c", str(lab_dumps.panic), "bt"])
    (stack,) = doc["stacks"]
    assert stack["cpu"] is not None
    names = [re.match(r"[^+ ]+", f)[0] for f in stack["frames"]]
    assert "panic" in names and "sysrq_handle_crash" in names, names
    assert names.index("panic") < names.index("sysrq_handle_crash")
    assert names[-1].startswith("entry_SYSCALL_64")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("which", ["elf", "kdump"])
def test_mod_matches_proc_modules(lab_dumps: LabDumps, capsys, which):
    t = lab_dumps.truth
    doc = run_json(capsys, ["-c", str(getattr(lab_dumps, which)), "mod"])
    mods = {m["name"]: m for m in doc["modules"]}
    assert set(mods) == set(t.modules)
    for name, (size, refs) in t.modules.items():
        assert mods[name]["size"] == size, name
        assert mods[name]["refcount"] == refs, name
        assert int(mods[name]["text"][0][0], 16) == t.module_bases[name], name
        assert mods[name]["state"] == "live"
    assert mods["kpeek_pin"]["refcount"] == 1
    holders = mods["kpeek_pin"]["held_by"]
    assert [h["pid"] for h in holders] == [t.pids["pin_holder"]]
    assert int(mods["kpeek_pin"]["address"], 16) == t.scenario["kpeek_pin.module"]
    assert all(not m["held_by"] for n, m in mods.items() if n != "kpeek_pin")
    assert "O" in mods["kpeek_abba"]["taints"] and "O" not in mods["qemu_fw_cfg"]["taints"]


@pytest.mark.timeout(600)
def test_kmem_addresses(lab_dumps: LabDumps, oracle, capsys):
    from drgn.helpers.linux.slab import slab_object_info

    s = lab_dumps.truth.scenario
    task_a, node = s["kpeek_abba.task_a"], s["kpeek_lists.a"]
    doc = run_json(capsys, ["-c", str(lab_dumps.elf), "kmem", hex(task_a), hex(task_a + 0x100),
                            hex(node), hex(s["kpeek_abba.lock_a"])])
    task, inside, list_node, lock = doc["addresses"]
    assert task["cache"]["name"] == "task_struct" and task["object"] == hex(task_a)
    assert task["free"] is False and task["offset"] == 0
    assert inside["object"] == hex(task_a) and inside["offset"] == 0x100
    assert list_node["cache"]["name"] == "kpeek_node" and list_node["free"] is False
    assert lock["cache"] is None and "kpeek_abba" in lock["note"]
    # every slot of the list's slab, allocated or free, as drgn with debuginfo says
    size = list_node["cache"]["slot_size"]
    first = node - list_node["index"] * size
    slots = [first + i * size for i in range(list_node["cache"]["objects_per_slab"])]
    doc = run_json(capsys, ["-c", str(lab_dumps.elf), "kmem", *map(hex, slots)])
    free = [w["free"] for w in doc["addresses"]]
    assert free == [not slab_object_info(oracle, a).allocated for a in slots]
    assert any(free) and not all(free)


@pytest.mark.timeout(600)
def test_kmem_caches(lab_dumps: LabDumps, oracle, capsys):
    from drgn.helpers.linux.slab import for_each_slab_cache

    doc = run_json(capsys, ["-c", str(lab_dumps.elf), "kmem", "-s"])
    caches = {c["name"]: c for c in doc["caches"]}
    theirs = {c.name.string_().decode(): c for c in for_each_slab_cache(oracle)}
    assert set(caches) == set(theirs)
    for name, c in caches.items():
        assert c["object_size"] == theirs[name].object_size.value_(), name
        assert c["slot_size"] == theirs[name].size.value_(), name
        assert c["active_objects"] <= c["total_objects"]
    tasks = len(lab_dumps.truth.tasks)
    assert caches["task_struct"]["active_objects"] >= tasks
    assert caches["kpeek_node"]["object_size"] >= 16


@pytest.mark.timeout(600)
def test_shell_on_dump_runs_drgn_helpers_without_debuginfo(lab_dumps: LabDumps):
    script = ("print('PIDS', sorted(t.pid.value_() for t in for_each_task(prog)))\n"
              "print_dmesg(prog)\n")
    done = subprocess.run([sys.executable, "-m", "kpeek", "-c", str(lab_dumps.elf), "shell"],
                          input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [x for x in done.stdout.splitlines() if "PIDS" in x]
    pids = set(json.loads(line.split("PIDS", 1)[1]))
    assert set(lab_dumps.truth.tasks) <= pids | {0}
    assert f"Linux version {lab_dumps.truth.release}" in done.stdout


@pytest.mark.timeout(600)
def test_mod_on_panic_dump_names_the_last_unloaded(lab_dumps: LabDumps, capsys):
    """The oops's own 'Modules linked in' line is the truth: the same modules
    and the same last unloaded one."""
    m = re.search(r"Modules linked in: (.*?) \[last unloaded: (\w+)", lab_dumps.panic_log)
    assert m, lab_dumps.panic_log[-2000:]
    doc = run_json(capsys, ["-c", str(lab_dumps.panic), "mod", "--no-files"])
    assert doc["last_unloaded"] == m[2]
    linked = [re.sub(r"\(\w+\)$", "", x) for x in m[1].split()]
    assert [x["name"] for x in doc["modules"]] == linked
