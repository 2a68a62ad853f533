"""kpeek shell: drgn over the live kernel through the BPF reader, with kpeek's
BTF and kallsyms as its type and symbol finders (no debuginfo, no /proc/kcore)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from capabilities import require
from kpeek.kernel.btf import load_vmlinux_btf
from kpeek.kernel.symbols import load_kallsyms
from scenarios import PARENT_OF_THREE, family

# A task may exit while the live walk reads it: retry a failed walk.
SCRIPT = """
import json
def walk():
    for attempt in range(5):
        try:
            return {t.pid.value_(): t.comm.string_().decode() for t in for_each_task(prog)}
        except FaultError as e:
            print("RETRY", e)
            kernel.reread()

print("TASKS " + json.dumps(walk()))
print("SIZE", prog.type("struct task_struct").size)
print("SYM", prog.symbol("do_sys_openat2").address)
print("CONST", prog["PIDTYPE_PID"].value_())
kpeek_bt(1)
"""


def run_shell(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "kpeek", *args, "shell"], input=script,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.timeout(180)
def test_shell_live_tasks_types_symbols():
    require("bpf")
    with family(PARENT_OF_THREE) as fam:
        out = run_shell(SCRIPT)
        lines = dict(re.sub(r"^(>>> |\.\.\. )+", "", line).split(" ", 1)
                     for line in out.splitlines() if re.search(r"[A-Z]+ ", line))
        assert "TASKS" in lines, out
        tasks = {int(k): v for k, v in json.loads(lines["TASKS"]).items()}
        for pid in [fam.pid, *fam.info["kids"]]:
            with open(f"/proc/{pid}/comm") as f:
                assert tasks[pid] == f.read().strip()
        assert tasks[1] and 2 in tasks  # init and kthreadd, found with no data symbols
    assert int(lines["SIZE"]) == load_vmlinux_btf().lookup("struct task_struct").size
    assert int(lines["SYM"]) == load_kallsyms().address_of("do_sys_openat2")
    assert int(lines["CONST"]) == 0
    assert re.search(r"^(>>> )*#0  __schedule\+", out, re.M), out


def test_shell_errors_are_one_line(tmp_path):
    junk = tmp_path / "not-a-dump"
    junk.write_bytes(b"hello")
    done = subprocess.run([sys.executable, "-m", "kpeek", "-c", str(junk), "shell"],
                          input="", capture_output=True, text=True, timeout=60)
    assert done.returncode in (2, 3)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.timeout(180)
def test_shell_statements_see_the_kernel_as_it_is_now():
    """The BPF reader caches what it read: each statement must still see the
    live kernel as it is when it runs, not as the first statement saw it."""
    require("bpf")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        script = (
            f"a = find_task(prog, {spinner.pid}).se.sum_exec_runtime.value_()\n"
            "import subprocess, time; time.sleep(0.5)\n"
            "late = subprocess.Popen(['sleep', '60'])\n"
            f"b = find_task(prog, {spinner.pid}).se.sum_exec_runtime.value_()\n"
            "print('RAN', b - a)\n"
            "print('LATE', find_task(prog, late.pid).comm.string_().decode())\n"
            "kpeek_bt(late.pid)\n"
            "late.kill(); late.wait()\n"
        )
        out = run_shell(script)
    finally:
        spinner.kill()
        spinner.wait()
    lines = dict(re.sub(r"^(>>> |\.\.\. )+", "", line).split(" ", 1)
                 for line in out.splitlines() if re.search(r"(RAN|LATE) ", line))
    assert int(lines["RAN"]) > 100_000_000, out  # ns of CPU in 0.5 s of spinning
    assert lines["LATE"] == "sleep", out
    assert re.search(r"^#\d+ +.*nanosleep", out, re.M), out
