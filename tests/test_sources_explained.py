"""kpeek doctor --explain-sources: which facts come from where on this
kernel, checked against what the kernel really offers (its BTF, and whether
the shipped BPF objects load), as root and as a user BPF refuses."""

from __future__ import annotations

import json
import os
import sys

import pytest

from capabilities import require
from kpeek.cli import main
from kpeek.kernel.btf import load_vmlinux_btf
from kpeek.sources.explain import KernelFeatures, explain_sources


def _sources(capsys) -> dict[str, dict]:
    assert main(["doctor", "--explain-sources", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "kpeek.sources/1" and doc["kernel"] == os.uname().release
    return {f["fact"].split(" (")[0]: f for f in doc["facts"]}


def _has_member(struct: str, member: str) -> bool:
    try:
        load_vmlinux_btf().lookup(struct).offsetof(member)
    except Exception:
        return False
    return True


def test_root_on_this_kernel(capsys) -> None:
    require("root", "bpf")
    facts = _sources(capsys)
    assert facts["processes and descriptor tables"]["source"].startswith("BPF iterators")
    refs = facts["open-file reference counts, f_mode, file and task addresses"]["source"]
    assert refs == f"BPF (file.{'f_ref' if _has_member('struct file', 'f_ref') else 'f_count'})"
    lock = facts["the kernel lock"] if "the kernel lock" in facts else next(
        f for k, f in facts.items() if k.startswith("the kernel lock"))
    if _has_member("struct task_struct", "blocker"):
        assert lock["source"] == "task_struct.blocker, else a stack scan"
    else:
        assert lock["source"].startswith("stack scan")
        assert "no task_struct.blocker" in lock["why"]
    assert not [f for f in facts.values() if f["source"] == "unavailable"], facts


def test_without_bpf_says_what_is_lost_and_why(tmp_path) -> None:
    """Root with every capability dropped: the BPF objects do not load, so
    /proc where it can, and the rest unavailable with the kernel's refusal."""
    import shutil
    import subprocess

    require("root")
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian system"
    out = subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "kpeek",
         "doctor", "--explain-sources", "--json"],
        capture_output=True, text=True, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)),
        timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    facts = {f["fact"]: f for f in json.loads(out.stdout)["facts"]}
    assert facts["processes and descriptor tables"]["source"] == "/proc"
    assert facts["wait channels and kernel stacks"]["source"].startswith("/proc")
    missing = [f for f in facts.values() if f["source"] == "unavailable"]
    assert len(missing) == 3
    assert all("run as root" in f["why"] for f in missing), missing


@pytest.mark.parametrize("release,loop,blocker", [("5.15.0-91-generic", False, False),
                                                  ("6.1.0-57-cloud-amd64", True, False)])
def test_older_kernels_name_their_fallbacks(release, loop, blocker) -> None:
    features = KernelFeatures(release, None, None, blocker, loop, "f_count")
    facts = {f.fact: f for f in explain_sources(features)}
    stacks = facts["wait channels and kernel stacks"]
    assert stacks.source.startswith("BPF" if loop else "/proc")
    assert ("bpf_loop" in stacks.why) is not loop
    lock = next(f for k, f in facts.items() if k.startswith("the kernel lock"))
    assert lock.source.startswith("stack scan") and "6.16+" in lock.why
