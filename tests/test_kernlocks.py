"""doctor's kernel-lock edges on a real mutex wait, by both routes: the
kernel's own ``task_struct.blocker`` where it has one (6.16+), and the
waiter record on the sleeping task's stack, which is all older kernels
(6.1, 5.15) offer. The route without blocker is also forced on this kernel,
so both are tested wherever the suite runs."""

from __future__ import annotations

import platform

import pytest

from capabilities import require
from kpeek.diagnose import kernlocks
from kpeek.diagnose.findings import diagnose
from kpeek.diagnose.story import all_text
from kpeek.kernel.btf import load_vmlinux_btf
from kpeek.sources import take_snapshot
from scenarios import MUTEX_WAIT, family

pytestmark = pytest.mark.timeout(90)


def _has_blocker() -> bool:
    try:
        load_vmlinux_btf().lookup("struct task_struct").offsetof("blocker")
    except Exception:
        return False
    return True


@pytest.mark.parametrize("route", ["kernel", "stack"])
def test_mutex_waiter_holder_and_route(route: str, monkeypatch) -> None:
    require("root", "bpf")
    if platform.machine() != "x86_64":
        pytest.skip("the scenario calls userfaultfd by its x86-64 number")
    if route == "stack":  # as on a kernel without task_struct.blocker
        offset = kernlocks._maybe_offset
        hide = {"blocker"}
        monkeypatch.setattr(
            kernlocks, "_maybe_offset", lambda t, path: None if path in hide else offset(t, path)
        )
    by_blocker = route == "kernel" and _has_blocker()
    with family(MUTEX_WAIT) as fam:
        waiter, holder = fam.info["waiter"], fam.info["holder"]
        snap = take_snapshot("auto", stacks=True)
        diag = diagnose(snap, min_sleep=0.0, kernel_log=False, kernel_memory=True)
        [hung] = [h for h in diag.hung if h.task.pid == waiter]
        assert hung.chain, all_text(diag)
        edge = hung.chain[0]
        assert (edge.kind, edge.holder) == ("mutex", f"task:{holder}"), edge
        expected = "task_struct.blocker" if by_blocker else "waiter record on the kernel stack"
        assert expected in edge.source
        assert "1 waiter" not in (edge.detail or "")
