"""The BPF objects shipped in the package: fresh, reproducible, and free of
anything from the machine that built them."""

from __future__ import annotations

import json

import pytest

from capabilities import require
from kpeek.sources.bpf import build


def test_every_shipped_object_is_fresh() -> None:
    """Each object was built from the program and header as they are now
    (else: python -m kpeek.sources.bpf.build)."""
    assert build.stale(build.load_manifest()) == []


@pytest.mark.timeout(120)
def test_the_recorded_compiler_rebuilds_each_object_byte_for_byte() -> None:
    require("clang")
    clang = build._tool("clang")
    manifest = build.load_manifest()
    if build.compiler_version(clang) != manifest["compiler"]:
        pytest.fail(f"objects were built by {manifest['compiler']}; setup.sh installs that one")
    for name in build.PROGRAMS:
        rebuilt = build.compile_object(name, clang, build._tool("llvm-strip"))
        assert rebuilt == build.object_path(name).read_bytes(), name


def test_objects_carry_no_build_paths_or_kernel_types() -> None:
    """Relative file names only; types from the hand-kept vmlinux.h, not a
    dump of the build machine's kernel (which would carry thousands)."""
    for name in build.PROGRAMS:
        data = build.object_path(name).read_bytes()
        assert b"/work/" not in data and b"/home/" not in data and b"/tmp/" not in data
        assert b"./" + name.encode() + b".bpf.c" in data
    header = (build.HERE / build.HEADER).read_text()
    assert header.count("struct ") < 150 and "preserve_access_index" in header


def test_manifest_is_package_data() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["kpeek"]
    for pattern in ("sources/bpf/*.bpf.o", "sources/bpf/objects.json"):
        assert pattern in data
    assert json.loads(build.MANIFEST.read_text())["objects"].keys() == set(build.PROGRAMS)
