"""doctor on real userfaultfd waits: a thread that touches a page registered
with a userfaultfd sleeps in handle_userfault until the monitor holding the
userfaultfd resolves the fault. A stopped monitor is the root; a free one is
no finding; a single-threaded process that faults on its own userfaultfd is
read by nobody. Both sources."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fuse_scenarios import ByPid, _die_with_parent, wait_for, wchan
from wait_scenarios import diagnosis_on, stopped

PY = sys.executable

# argv: monitor-child | self. Registers one anonymous page (missing faults),
# prints "monitor PID" (a forked child that keeps the userfaultfd and never
# reads it; the parent closes its own) and "faulting PID", then touches the page.
FAULTER = r'''
import ctypes, fcntl, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
uffd = libc.syscall(323, os.O_CLOEXEC)  # userfaultfd(2), x86-64
if uffd < 0:
    sys.exit(f"userfaultfd: {os.strerror(ctypes.get_errno())}")
fcntl.ioctl(uffd, 0xC018AA3F, bytearray(struct.pack("QQQ", 0xAA, 0, 0)))  # UFFDIO_API
page = libc.mmap(None, 4096, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
fcntl.ioctl(uffd, 0xC020AA00, bytearray(struct.pack("QQQQ", page, 4096, 1, 0)))  # REGISTER
if sys.argv[1] == "monitor-child":
    if os.fork() == 0:
        os.write(1, b"monitor %d\n" % os.getpid())  # one write: lines never interleave
        time.sleep(3600)
        os._exit(0)
    os.close(uffd)
os.write(1, b"faulting %d\n" % os.getpid())
ctypes.string_at(page, 1)
'''


def fault(procs, mode: str) -> dict[str, int]:
    """Start the faulter; role -> pid once it sleeps in handle_userfault."""
    p = subprocess.Popen([PY, "-c", FAULTER, mode], stdout=subprocess.PIPE, text=True,
                         preexec_fn=_die_with_parent)
    procs.append(p)
    roles = {}
    for _ in range(2 if mode == "monitor-child" else 1):
        role, pid = p.stdout.readline().split()
        roles[role] = int(pid)
    if "monitor" in roles:  # the forked monitor is not our child: killed by pid
        procs.append(ByPid(roles["monitor"]))
    wait_for(lambda: wchan(roles["faulting"]).startswith("handle_userfault"), 15,
             "the fault in handle_userfault", about=[p])
    return roles


@pytest.mark.timeout(60)
def test_a_stopped_monitor_is_the_root_and_a_free_one_no_finding(procs, doctor_source):
    roles = fault(procs, "monitor-child")
    faulting, monitor = roles["faulting"], roles["monitor"]
    diag = diagnosis_on(doctor_source)
    [edge] = [e for e in diag.graph.edges if e.waiter == f"task:{faulting}"]
    assert (edge.kind, edge.holder, edge.certain) == ("userfaultfd", f"proc:{monitor}", True)
    assert "1 fault unresolved" in edge.detail
    assert not diag.restricted_to({faulting, monitor}).found_problems
    with stopped(monitor) as fix:
        diag = diagnosis_on(doctor_source)
        [hung] = [h for h in diag.hung if h.task.pid == faulting]
        assert hung.stuck and f"pid {monitor}" in hung.root and fix in hung.fix


@pytest.mark.timeout(60)
def test_faulting_on_its_own_userfaultfd_is_read_by_nobody(procs, doctor_source):
    faulting = fault(procs, "self")["faulting"]
    diag = diagnosis_on(doctor_source)
    [hung] = [h for h in diag.hung if h.task.pid == faulting]
    assert hung.stuck and "no one reads it" in hung.root
