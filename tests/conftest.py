"""Shared pytest configuration: tests import helpers from this directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from capabilities import time_scale
from lab.fixtures import lab_dumps  # noqa: F401  (the QEMU lab's session fixture)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Stretch each test's own timeout by KPEEK_TEST_TIME_SCALE (a guest
    kernel under TCG runs the same real states several times slower)."""
    scale = time_scale()
    if scale == 1:
        return
    for item in items:
        mark = item.get_closest_marker("timeout")
        if mark and mark.args:
            item.add_marker(pytest.mark.timeout(mark.args[0] * scale), append=False)


@pytest.fixture
def procs() -> Iterator[list]:
    """Processes a test starts (Popen, or fuse_scenarios.ByPid); killed and
    reaped afterwards, always."""
    from fuse_scenarios import reap

    started: list = []
    yield started
    reap(started)


@pytest.fixture(params=["bpf", "procfs"])
def doctor_source(request: pytest.FixtureRequest) -> str:
    """Each source a snapshot for doctor can come from (BPF needs root)."""
    from capabilities import require

    require("root", *(["bpf"] if request.param == "bpf" else []))
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _leave_bpffs_as_found() -> Iterator[None]:
    """Where /sys/fs/bpf is a bpffs, kpeek run by the tests as root keeps its
    BPF programs there (kpeek.sources.bpf.kept): remove the key directories
    the session made, and kpeek's directory if it was not there before."""
    from kpeek.sources.bpf import kept

    had_home = os.path.lexists(kept.HOME)
    before = set(kept.kept_dirs())
    yield
    if not had_home:
        with suppress(OSError):
            kept.forget()
        return
    for name in set(kept.kept_dirs()) - before:
        with suppress(OSError):
            kept.remove_key_dir(name)
