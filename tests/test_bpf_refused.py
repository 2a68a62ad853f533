"""A program this kernel's verifier refuses costs that program, not the
object: the others load and run, and asking for the refused one says why.

(Kernels change what the verifier trusts: 6.18.44 stopped trusting a vma's
file, refused snapshot_maps' bpf_d_path on it, and with it the whole
snapshot object.) The object here is compiled for the test, with one
program that every verifier refuses: it loads through a task pointer the
iterator may hand over as NULL.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from capabilities import require
from kpeek.errors import NotSupported
from kpeek.sources.bpf import build

SOURCE = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("iter/task")
int pids(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	__u32 pid;

	if (!task)
		return 0;
	pid = task->pid;
	bpf_seq_write(ctx->meta->seq, &pid, sizeof(pid));
	return 0;
}

SEC("iter/task")
int unchecked(struct bpf_iter__task *ctx)
{
	__u32 pid = ctx->task->pid; /* no NULL check: refused */

	bpf_seq_write(ctx->meta->seq, &pid, sizeof(pid));
	return 0;
}
"""


@pytest.fixture(scope="module")
def two_programs(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require("bpf")
    require("clang")
    tmp: Path = tmp_path_factory.mktemp("refused")
    (tmp / "two.bpf.c").write_text(SOURCE)
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-g", "-I", str(build.HERE),
         "-c", "two.bpf.c", "-o", "two.bpf.o"],
        cwd=tmp, check=True,
    )  # fmt: skip
    return (tmp / "two.bpf.o").read_bytes()


def test_the_refused_program_is_left_out_and_the_other_runs(two_programs: bytes) -> None:
    from kpeek.sources.bpf.libbpf import BpfObject

    obj = BpfObject(two_programs, "two")
    try:
        assert set(obj.refused) == {"unchecked"}
        assert "verifier refused" in obj.refused["unchecked"]
        out = obj.attach_iter("pids").run()
        pids = {pid for (pid,) in struct.iter_unpack("<I", out)}
        assert os.getpid() in pids and len(pids) > 1
        with pytest.raises(NotSupported, match=r"unchecked.*verifier refused"):
            obj.attach_iter("unchecked")
        # Asking again for everything, or for the refused one, loads nothing more.
        assert obj.has_programs(None) and obj.has_programs(frozenset({"unchecked"}))
    finally:
        obj.close()


def test_a_refused_program_asked_for_alone_fails_the_load(two_programs: bytes) -> None:
    from kpeek.sources.bpf.libbpf import BpfObject

    with pytest.raises(NotSupported, match="verifier refused"):
        BpfObject(two_programs, "two", frozenset({"unchecked"}))


def test_rows_refused_come_from_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole-system snapshot whose process-row programs the kernel refused
    (as 6.18.44 did snapshot_maps) still has its descriptors from BPF, and
    the rows come from /proc, the same as BPF gives them."""
    require("bpf")
    from kpeek.filemodel import ProcessFileTable
    from kpeek.sources import fdfacts, take_snapshot
    from kpeek.sources.bpf import procfiles

    def refused(tgids: list[int] | None) -> None:
        raise NotSupported("BPF program snapshot_maps not loaded: the kernel's verifier refused it")

    whole = take_snapshot("bpf", threads=False, process_files=True)
    assert isinstance(whole.process_files, ProcessFileTable)
    monkeypatch.setattr(procfiles, "read_parts", refused)
    monkeypatch.setattr(procfiles, "read_process_parts", refused)
    snap = take_snapshot("bpf", threads=False, process_files=True)
    assert snap.source == "bpf" and snap.fds and not snap.process_files
    me = os.getpid()
    rows = fdfacts.enrich(snap).process_files
    assert rows.of(me) == fdfacts.process_files(me) == whole.process_files.of(me)
