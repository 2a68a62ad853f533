"""The real-state tests that matter most, run again inside other kernels.

One QEMU guest per kernel and test session (Debian 12's 6.1 cloud kernel,
fetched by the lab, and its 6.12 backports kernel) boots with this machine's root file system shared
read-only (see lab/hostroot.py) and runs this checkout's own tests there with
pytest, under CI=true so that nothing skips. Each test here passes when its
twin passed inside the guest, and fails with the guest's output otherwise.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from capabilities import require

# Run inside the guest (pytest node ids; a parametrized test counts as
# passed when every one of its cases passed).
GUEST_TESTS = (
    "tests/test_bpf_snapshot.py::test_pipe_fork_dup2_family_agrees",
    "tests/test_bpf_snapshot.py::test_sockets_memfd_cloexec_thread_family_agrees",
    "tests/test_bpf_snapshot.py::test_stacks_wchan_blocker_and_addresses",
    "tests/test_bpf_reader.py::test_fields_at_btf_offsets_match_proc",
    "tests/test_files_fast_paths.py::test_bpf_process_rows_are_those_of_proc",
    "tests/test_doctor.py::test_flock_abba_is_a_deadlock",
    "tests/test_doctor.py::test_missing_close_names_the_childs_fd",
    "tests/test_doctor.py::test_fuse_writer_holds_i_rwsem_and_truncate_hangs",
    "tests/test_kernlocks.py::test_mutex_waiter_holder_and_route",
    "tests/test_doctor_bpf.py::test_lock_offsets_relocated_by_libbpf_are_btfs",
    "tests/test_kmem_cli.py::test_task_and_struct_members_match_proc",
    "tests/test_lists.py::test_children_and_thread_lists_of_a_real_process",
    "tests/test_sources_explained.py",
)
# Each guest costs minutes of TCG: 6.1 always, 6.12 when asked for
# (KPEEK_GUEST_KERNELS=6.1,6.12).
WANTED = os.environ.get("KPEEK_GUEST_KERNELS", "6.1").split(",")
ROOT = Path(__file__).resolve().parents[1]
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", re.M)


class GuestRun:
    def __init__(self, kernel: str, rc: int, output: str) -> None:
        self.kernel = kernel
        self.rc = rc
        self.output = output
        self.outcomes: dict[str, str] = {}
        for outcome, node in OUTCOME.findall(output):
            self.outcomes.setdefault(node.split(" ")[0], outcome)

    def of(self, prefix: str) -> dict[str, str]:
        return {n: o for n, o in self.outcomes.items() if n == prefix or n.startswith(
            (prefix + "[", prefix + "::"))}


# Debian 12's backports kernel (6.12: delayed dequeue, still no blocker or
# f_ref): the tests whose answers depend most on the kernel's internals.
BACKPORTS_TESTS = (
    "tests/test_bpf_snapshot.py::test_pipe_fork_dup2_family_agrees",
    "tests/test_bpf_snapshot.py::test_stacks_wchan_blocker_and_addresses",
    "tests/test_doctor.py::test_flock_abba_is_a_deadlock",
    "tests/test_doctor.py::test_fuse_writer_holds_i_rwsem_and_truncate_hangs",
    "tests/test_kernlocks.py::test_mutex_waiter_holder_and_route",
    "tests/test_sources_explained.py::test_root_on_this_kernel",
)


def _run_inside(tree, tests: tuple[str, ...], logs: Path) -> GuestRun:
    from lab.hostroot import HostRootGuest

    # The venv's interpreter (a symlink to a real binary, never a shell shim
    # such as pyenv's: each exec of one costs seconds under TCG).
    argv = [sys.executable, "-m", "pytest", "-q", "-rA", "--color=no", "-p", "no:cacheprovider",
            "--timeout", "600", *tests]
    log = logs / f"guest-{tree.version}.log"  # the whole console, for a failure's post-mortem
    with HostRootGuest(tree, log_path=log) as guest:
        env = {"CI": "true", "KPEEK_TEST_TIME_SCALE": "6",
               "PATH": f"{ROOT}/.venv/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        rc, output = guest.run(argv, env=env, timeout=900)
    return GuestRun(tree.version, rc, output)


def _assert_passed(run: GuestRun, node: str) -> None:
    found = run.of(node)
    assert found, f"{node} did not run in the {run.kernel} guest:\n{run.output[-3000:]}"
    failed = {n: o for n, o in found.items() if o != "PASSED"}
    assert not failed, f"in the {run.kernel} guest: {failed}\n{run.output[-6000:]}"


@pytest.fixture(scope="session")
def debian_61(tmp_path_factory) -> GuestRun:
    require("qemu")
    from lab.kernels import debian_kernel

    return _run_inside(debian_kernel(), GUEST_TESTS, tmp_path_factory.mktemp("guest"))


@pytest.fixture(scope="session")
def debian_612(tmp_path_factory) -> GuestRun:
    require("qemu")
    from lab.hostroot import image_kernel

    return _run_inside(image_kernel(), BACKPORTS_TESTS, tmp_path_factory.mktemp("guest"))


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("node", GUEST_TESTS if "6.1" in WANTED else ())
def test_passes_inside_debian_61(debian_61: GuestRun, node: str) -> None:
    _assert_passed(debian_61, node)


if "6.12" in WANTED:  # a second TCG guest costs minutes: only when asked for
    @pytest.mark.timeout(1200)
    @pytest.mark.parametrize("node", BACKPORTS_TESTS)
    def test_passes_inside_debian_612(debian_612: GuestRun, node: str) -> None:
        _assert_passed(debian_612, node)
