"""The lab's session fixture: one guest boot per test session, real dumps of real bugs.

The guest (the pinned Debian cloud kernel, busybox, our modules) builds:
  * kpeek_abba: two kernel threads in a mutex ABBA deadlock (D state), with a
    hung-task report in the log;
  * kpeek_pin: a misc device whose fops name their module, held open by a
    ``sleep`` (the module cannot be unloaded: rmmod fails);
  * kpeek_lists: a whole list (control) and a list whose freed node's slab
    slot was reused, so the list reaches a node pointing to itself;
  * user processes asleep: ``sleep``, and ``cat`` reading a pipe that ``sleep``
    holds open.
It records the guest's own view (/proc) as the truth, stops the VM and takes an
ELF dump and a kdump-compressed dump of the same memory. It then unloads
kpeek_noowner (a device without .owner) under an open file, calls into it (an
oops in unloaded module text), panics through sysrq and takes a third dump.

Only the downloaded kernel and built modules are cached between sessions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capabilities import require
from lab.guest import Guest, boot_busybox, build_initramfs
from lab.kernels import KernelTree, build_module, debian_kernel
from lab.qemu import GuestError, unflatten

MODULES_DIR = Path(__file__).parent / "modules"


@dataclass
class GuestTask:
    pid: int
    comm: str
    state: str  # the /proc/PID/stat letter
    ppid: int


@dataclass
class GuestTruth:
    """What the guest itself said just before the dumps were taken."""

    release: str
    tasks: dict[int, GuestTask]
    modules: dict[str, tuple[int, int]]  # name -> (size, refcount) from /proc/modules
    module_bases: dict[str, int]
    symbols: dict[str, int]  # a sample of /proc/kallsyms (names unique in the whole table)
    scenario: dict[str, int]  # addresses the modules printed (lock_a=, bad=, reused=...)
    uptime: float
    tainted: int
    dmesg: str
    rmmod_pinned: str  # what rmmod said for the pinned module
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid (sleeper, pipe_reader...)


@dataclass
class LabDumps:
    tree: KernelTree
    elf: Path  # ELF vmcore of the running scenarios
    kdump: Path  # the same memory, kdump-compressed (makedumpfile -R of QEMU's kdump-zlib)
    flattened: Path  # QEMU's kdump-zlib output as written (makedumpfile's flattened format)
    panic: Path  # ELF vmcore after the unloaded-module oops and a sysrq panic
    truth: GuestTruth
    panic_log: str  # the console output from the oops and the panic
    console: Path


def _parse_stat(text: str) -> dict[int, GuestTask]:
    tasks = {}
    for line in text.splitlines():
        m = re.match(r"(\d+) \((.*)\) (\S) (\d+) ", line)
        if m:
            pid = int(m[1])
            tasks[pid] = GuestTask(pid, m[2], m[3], int(m[4]))
    return tasks


def _parse_modules(text: str) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    sizes, bases = {}, {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
            sizes[parts[0]] = (int(parts[1]), int(parts[2]))
            base = next((p for p in parts if p.startswith("0x")), None)
            if base:
                bases[parts[0]] = int(base, 16)
    return sizes, bases


def _parse_symbols(text: str) -> dict[str, int]:
    seen: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{16}", parts[0]):
            seen.setdefault(parts[2], []).append(int(parts[0], 16))
    return {name: addrs[0] for name, addrs in seen.items() if len(addrs) == 1}


def _scenario_addresses(dmesg: str) -> dict[str, int]:
    found = {}
    for m in re.finditer(r"(kpeek_\w+): ([^\n]*)", dmesg):
        for key, value in re.findall(r"(\w+)=([0-9a-f]{16})", m[2]):
            found[f"{m[1]}.{key}"] = int(value, 16)
        for key, value in re.findall(r"(task_\w)=[0-9a-f]+ pid (\d+)", m[2]):
            found[f"{m[1]}.{key}_pid"] = int(value)
    return found


def _wait_in_dmesg(guest: Guest, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in guest.run("dmesg"):
        if time.monotonic() > deadline:
            raise GuestError(f"{needle!r} never appeared in the guest's log")
        time.sleep(0.5)


def _build_scenarios(guest: Guest) -> dict[str, int]:
    """Load the scenario modules and start the user processes; returns role -> pid."""
    # The hung-task reports (KERN_ERR) would otherwise reach the serial console in
    # the middle of a command's output, a line of dmesg taken as truth among them.
    guest.run("dmesg -n 1")
    guest.run("echo 2 > /proc/sys/kernel/hung_task_timeout_secs")
    for name in ("kpeek_abba", "kpeek_pin", "kpeek_lists"):
        guest.run(f"insmod /lib/kpeek/{name}.ko")
    pids = {}
    pids["pin_holder"] = int(guest.run("sleep 100000 < /dev/kpeek_pin & echo $!").strip())
    pids["sleeper"] = int(guest.run("sleep 200000 & echo $!").strip())
    # cat reads a pipe whose writer (sleep) never writes: asleep in pipe_read.
    guest.run("mkfifo /tmp/kpeek-pipe")
    pids["pipe_reader"] = int(guest.run("cat /tmp/kpeek-pipe > /dev/null & echo $!").strip())
    pids["pipe_writer"] = int(guest.run("sleep 300000 > /tmp/kpeek-pipe & echo $!").strip())
    _wait_in_dmesg(guest, "blocked for more than", 30)
    return pids


def _truth(guest: Guest, pids: dict[str, int]) -> GuestTruth:
    rmmod = guest.run("rmmod kpeek_pin", check=False).strip()
    modules, bases = _parse_modules(guest.run("cat /proc/modules"))
    # Every 97th symbol plus the ones tests name, of the names that are unique in
    # the whole table: a sample that crosses it, in one pass (awk is slow under TCG).
    symbols = _parse_symbols(
        guest.run(
            "awk '{ n[$3]++ } NR % 97 == 1 || $3 ~ /^(init_task|jiffies|linux_banner|kpeek_.*|prb|"
            "__start_BTF|__stop_BTF|_stext|modules)$/ { s[$3] = $0 } "
            "END { for (k in s) if (n[k] == 1) print s[k] }' /proc/kallsyms"
        )
    )
    dmesg = guest.run("dmesg")
    return GuestTruth(
        release=guest.run("uname -r").strip(),
        tasks=_parse_stat(guest.run("cat /proc/[0-9]*/stat")),
        modules=modules,
        module_bases=bases,
        symbols=symbols,
        scenario=_scenario_addresses(dmesg),
        uptime=float(guest.run("cat /proc/uptime").split()[0]),
        tainted=int(guest.run("cat /proc/sys/kernel/tainted").strip()),
        dmesg=dmesg,
        rmmod_pinned=rmmod,
        pids=pids,
    )


def _oops_and_panic(guest: Guest) -> str:
    """Unload a device without .owner under an open file, read it (an oops in
    freed module text), then panic through sysrq; returns the console output."""
    guest.run("dmesg -n 4")  # the console level "quiet" boots with, for the oops's lines
    start = len(guest.machine.console)
    guest.run("insmod /lib/kpeek/kpeek_noowner.ko")
    guest.run("mkfifo /tmp/kpeek-go")
    guest.run("(exec 3< /dev/kpeek_noowner; read x < /tmp/kpeek-go; cat <&3) &")
    guest.run("sleep 1; rmmod kpeek_noowner")
    guest.run("echo go > /tmp/kpeek-go; sleep 2", check=False)
    guest.machine.send(b"echo c > /proc/sysrq-trigger\n")
    guest.machine.wait_for(b"end Kernel panic", start=start, timeout=60)
    return bytes(guest.machine.console[start:]).decode(errors="replace")


def take_lab_dumps(where: Path, *, memory: str = "256M") -> LabDumps:
    """Boot the lab guest, build every scenario, take the dumps into ``where``."""
    tree = debian_kernel()
    modules = [tree.module("qemu_fw_cfg")]
    modules += [build_module(tree, d) for d in sorted(MODULES_DIR.iterdir()) if d.is_dir()]
    initrd = build_initramfs(where / "initrd.cpio", modules=modules)
    console = where / "console.log"
    with boot_busybox(tree, initrd, log_path=console, memory=memory) as guest:
        pids = _build_scenarios(guest)
        truth = _truth(guest, pids)
        vm = guest.machine
        vm.qmp("stop")  # both dumps see the same memory
        elf = vm.dump(where / "vmcore.elf", "elf")
        flattened = vm.dump(where / "vmcore.flat", "kdump-zlib")
        vm.qmp("cont")
        kdump = unflatten(flattened, where / "vmcore.kdump")
        panic_log = _oops_and_panic(guest)
        panic = vm.dump(where / "vmcore.panic", "elf")
    return LabDumps(tree, elf, kdump, flattened, panic, truth, panic_log, console)


@pytest.fixture(scope="session")
def lab_dumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDumps]:
    """The session's lab dumps (one boot for every test that asks)."""
    require("qemu")
    where = tmp_path_factory.mktemp("lab")
    yield take_lab_dumps(where)
    # pytest keeps the last three runs' temporary folders: ~600 MB of dumps each
    for dump in where.glob("vmcore.*"):
        dump.unlink(missing_ok=True)
