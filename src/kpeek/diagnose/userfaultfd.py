"""Wait edges from userfaultfd: a thread that touches a page registered with
a userfaultfd sleeps in handle_userfault until whoever reads that userfaultfd
(a monitor: QEMU's postcopy migration, CRIU's lazy pages, a GC) resolves the
fault with UFFDIO_COPY, ZEROPAGE or WAKE.

Which userfaultfd serves the faulting memory is kernel state (the VMA's
context) that /proc does not show; each userfaultfd's fdinfo counts the
faults it holds unresolved (``total:``). So the waiter waits for the holders
of the userfaultfds with faults outstanding (certain when there is one), or
of every userfaultfd when none says so. A userfaultfd that only the faulting
single-threaded process holds is read by nobody.
"""

from __future__ import annotations

from kpeek.diagnose.graph import Root, WaitEdge, WaitGraph, proc_node, task_node
from kpeek.diagnose.procinfo import proc_field
from kpeek.model import Task

UFFD_WAITS = ("handle_userfault",)
UFFD_PATH = "anon_inode:[userfaultfd]"
RESOURCE = "its page fault to be resolved through a userfaultfd"


def is_uffd_waiter(t: Task) -> bool:
    if (t.wchan or "").startswith(UFFD_WAITS):
        return True
    return any(f.startswith(UFFD_WAITS) for f in (t.kernel_stack or ())[:3])


def _outstanding(tgid: int, fd: int) -> int | None:
    """The faults a userfaultfd holds unresolved (fdinfo ``total:``)."""
    return proc_field(f"/proc/{tgid}/fdinfo/{fd}", b"total:", int)


def userfaultfd_edges(graph: WaitGraph) -> None:
    waiters = [t for t in graph.snapshot.tasks if is_uffd_waiter(t)]
    if not waiters:
        return
    snapshot = graph.snapshot
    holders: dict[str, dict[int, list[int]]] = {}  # open file -> tgid -> fds
    faults: dict[str, int] = {}
    for d in snapshot.fds:
        f = snapshot.open_files.get(d.open_file)
        if f is None or f.path != UFFD_PATH:
            continue
        if d.open_file not in faults:
            faults[d.open_file] = _outstanding(d.tgid, d.fd) or 0
        holders.setdefault(d.open_file, {}).setdefault(d.tgid, []).append(d.fd)
    busy = [file for file, n in faults.items() if n > 0]
    chosen = busy or list(holders)
    if not chosen:
        return
    by_tgid: dict[int, list[int]] = {}
    for file in chosen:
        for tgid, fds in holders[file].items():
            by_tgid.setdefault(tgid, []).extend(fds)
    pending = sum(faults[file] for file in chosen)
    source = "wchan handle_userfault, /proc/PID/fdinfo of userfaultfds (total:)"
    for t in waiters:
        node = task_node(t.pid)
        if set(by_tgid) == {t.tgid} and len(graph.threads_of(t.tgid)) < 2:
            root = f"none:userfaultfd:{t.pid}"
            graph.roots[root] = Root(
                "nobody", "only the faulting single-threaded process holds the userfaultfd: "
                          "no one reads it to resolve the fault",
                "end the process (or hand the userfaultfd to a monitor before touching the "
                "registered memory)")
            graph.add(WaitEdge(node, root, "userfaultfd", RESOURCE, note="no other reader",
                               source=source))
            continue
        for tgid, fds in sorted(by_tgid.items()):
            graph.add(WaitEdge(
                node, proc_node(tgid), "userfaultfd", RESOURCE, any_of=len(by_tgid) > 1,
                detail=f"userfaultfd fd {', '.join(map(str, sorted(fds)))}, "
                       f"{pending} fault{'s' if pending != 1 else ''} unresolved",
                certain=len(chosen) == 1, source=source))
