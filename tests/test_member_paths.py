"""Member paths through pointers, as in C and crash/drgn (`mm->mmap_base`,
`files->fdt->max_fds`, arrays with [i]), checked against what the process
itself knows; misaligned struct addresses refused as rd refuses them."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from capabilities import require

KPEEK = [sys.executable, "-m", "kpeek"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KPEEK, *args], capture_output=True, text=True, timeout=120)


def test_task_member_paths_match_the_process():
    require("root", "bpf")
    # the child sets its own open-file limit, then waits to be read
    child = subprocess.Popen(
        [sys.executable, "-c", "import resource, sys; "
         "resource.setrlimit(resource.RLIMIT_NOFILE, (345, 345)); sys.stdin.read()"],
        stdin=subprocess.PIPE)
    try:
        import time

        for _ in range(100):
            with open(f"/proc/{child.pid}/limits") as f:
                if "345" in f.read():
                    break
            time.sleep(0.05)
        p = _run("task", str(child.pid), "signal->rlim[7].rlim_cur", "files->fdt->max_fds",
                 "comm", "--json")
        assert p.returncode == 0, p.stderr
        value = json.loads(p.stdout)["value"]
        assert resource.RLIMIT_NOFILE == 7 and value["signal->rlim[7].rlim_cur"] == 345
        assert value["files->fdt->max_fds"] >= len(os.listdir(f"/proc/{child.pid}/fd"))
        assert value["comm"].startswith("python")
    finally:
        child.kill()
        child.wait()


def test_struct_member_path_through_pointers_at_an_address():
    require("root", "bpf")
    me = str(os.getpid())
    address = json.loads(_run("task", me, "--json").stdout)["address"]
    p = _run("struct", "task_struct.pid,files->fdt->max_fds", address)
    assert p.returncode == 0, p.stderr
    assert f"pid = {me}" in p.stdout and "files->fdt->max_fds = " in p.stdout


def test_arrow_on_a_non_pointer_and_a_misaligned_address_are_one_line():
    require("root", "bpf")
    me = str(os.getpid())
    p = _run("task", me, "pid->x")
    assert p.returncode == 2 and "not a pointer" in p.stderr and p.stderr.count("\n") == 1
    address = json.loads(_run("task", me, "--json").stdout)["address"]
    p = _run("struct", "task_struct", f"{address}+3")
    assert p.returncode == 2 and "not aligned to 8 bytes" in p.stderr
