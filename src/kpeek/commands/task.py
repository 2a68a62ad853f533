"""kpeek task: the task_struct of a pid, read live, with its key fields.

  kpeek task 1
  kpeek task 4242 --json
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.errors import UsageError
from kpeek.kernel.btf import Kind, UnknownMember
from kpeek.kernel.objects import Object
from kpeek.kernel.program import Kernel
from kpeek.kernel.sched import state_letter
from kpeek.targets import open_kernel
from kpeek.textsafe import for_terminal

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

# Shown in this order when the running kernel's task_struct has them.
SCALAR_FIELDS = (
    "pid", "tgid", "comm", "__state", "exit_state", "flags", "ptrace", "on_cpu",
    "thread_info.cpu", "prio", "static_prio", "normal_prio", "rt_priority", "policy",
    "nvcsw", "nivcsw", "utime", "stime", "start_time",
)
TASK_POINTERS = ("parent", "real_parent", "group_leader")
OTHER_POINTERS = (
    "mm", "active_mm", "files", "fs", "nsproxy", "signal", "sighand", "cred", "stack",
    "blocked_on", "pi_blocked_on",
)
HEX_FIELDS = ("flags", "__state", "exit_state", "ptrace")
# include/linux/hung_task.h: the low bits of task_struct.blocker say what it is.
BLOCKER_TYPES = {0: "mutex", 1: "semaphore", 2: "rw_semaphore (reader)",
                 3: "rw_semaphore (writer)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "task",
        help="a task's task_struct and its key fields",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pid", type=int, help="a pid (thread id) as /proc shows it")
    p.add_argument("members", nargs="*", metavar="MEMBER",
                   help="only these members, C paths through pointers too: "
                        "files->fdt->max_fds, mm->mmap_base, signal->rlim[7]")
    add_json(p)
    p.set_defaults(func=run)


def _has(task: Object, path: str) -> bool:
    try:
        task.type.resolve().member(path)
        return True
    except UnknownMember:
        return False


def describe(kernel: Kernel, task: Object) -> dict[str, Any]:
    """Key fields of a task_struct as plain data (pointers as "0x..." strings)."""
    task.prefetch()
    doc: dict[str, Any] = {"address": f"0x{task.address:x}"}
    for path in SCALAR_FIELDS:
        if _has(task, path):
            doc[path] = task.member(path).value()
        if path == "comm":  # the letter ps shows, next to the raw __state
            doc["state"] = None
    # __state since 5.14; "state" before
    state = task.member("__state" if _has(task, "__state") else "state").value()
    exit_state = 0
    if _has(task, "exit_state"):
        exit_state = task.member("exit_state").value()
    doc["state"] = state_letter(int(state), int(exit_state))
    for path in TASK_POINTERS:
        if not _has(task, path):
            continue
        ptr = task.member(path).value_int()
        entry: dict[str, Any] = {"address": f"0x{ptr:x}"}
        if ptr:
            other = kernel.object("struct task_struct", ptr)
            entry["pid"] = other.member("pid").value()
            entry["comm"] = other.member("comm").value()
        doc[path] = entry
    for path in OTHER_POINTERS:
        if _has(task, path):
            doc[path] = f"0x{task.member(path).value_int():x}"
    if _has(task, "blocker"):
        raw = task.member("blocker").value_int()
        doc["blocker"] = None if raw == 0 else {
            "address": f"0x{raw & ~3:x}", "type": BLOCKER_TYPES[raw & 3]}
    if _has(task, "children"):
        kids = kernel.list_entries(task.member("children"), "struct task_struct", "sibling",
                                   max_entries=100_000)
        doc["children"] = len(kids)
    return doc


def run(args: argparse.Namespace) -> int:
    if args.pid < 0:
        raise UsageError("pid must be >= 0")
    kernel = open_kernel(args, "kpeek task")
    task = kernel.task(args.pid)
    if task.type.resolve().kind != Kind.STRUCT:
        raise UsageError("struct task_struct missing from BTF")
    if args.members:
        from kpeek.commands.struct import show_values

        for m in args.members:  # unknown members are reported before any read
            task.type.resolve().member(m)
        return show_values(task, args.members, kernel.symbols, args.json)
    doc = describe(kernel, task)
    if args.json:
        jsonout.emit("task", doc)
        return 0
    out = sys.stdout
    for key, value in doc.items():
        if isinstance(value, dict) and "pid" in value:
            text = f"{value['address']} (pid {value['pid']}, {for_terminal(value['comm'])})"
        elif isinstance(value, dict):
            text = f"{value['address']} ({value['type']})"
        elif key == "comm":
            text = f'"{for_terminal(value)}"'
        elif key in HEX_FIELDS and isinstance(value, int):
            text = f"0x{value:x}"
        elif value is None:
            text = "-"
        else:
            text = for_terminal(str(value))
        out.write(f"{key:>16}: {text}\n")
    return 0
