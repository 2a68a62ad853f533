"""Build the shipped BPF objects (a developer's step, never a user's).

Each ``<name>.bpf.c`` here is compiled once, with CO-RE relocations, against
the hand-kept ``vmlinux.h`` next to it (no type from the build machine's
kernel), and the object ``<name>.bpf.o`` is committed and shipped inside the
package: libbpf relocates it for whichever kernel loads it, so a user needs
no clang, no kernel headers and no cache. ``objects.json`` records, for each
object, the hash of its inputs and of the object itself, and the compiler
that made it: the tests check that every object is fresh and that the
recorded compiler rebuilds it byte for byte.

    python -m kpeek.sources.bpf.build           # rebuild what is stale
    python -m kpeek.sources.bpf.build --force   # rebuild everything
    python -m kpeek.sources.bpf.build --check   # exit 1 if anything is stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PROGRAMS = ("snapshot", "reader")
HEADER = "vmlinux.h"
MANIFEST = HERE / "objects.json"
# The objects are built for x86-64: CO-RE relocates field offsets, not the
# pt_regs layout or the target architecture (the programs use neither).
TARGET_ARCH = "x86"


def object_path(name: str) -> Path:
    return HERE / f"{name}.bpf.o"


def inputs_digest(name: str) -> str:
    """sha256 over the files the object is made from (program and header)."""
    h = hashlib.sha256()
    for file in (f"{name}.bpf.c", HEADER):
        h.update(file.encode() + b"\0" + (HERE / file).read_bytes() + b"\0")
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest() -> dict:
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {"objects": {}}


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    sys.exit(f"build: none of {', '.join(names)} found (apt-get install clang llvm)")


def compiler_version(clang: str) -> str:
    out = subprocess.run([clang, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def compile_object(name: str, clang: str, strip: str) -> bytes:
    """The object for ``name``: clang -O2 -g with relative paths (the build
    directory is not recorded), DWARF stripped and BTF kept (libbpf needs
    BTF and the CO-RE relocations in .BTF.ext, not DWARF)."""
    with tempfile.TemporaryDirectory(prefix="kpeek-bpf-") as tmp:
        out = Path(tmp) / f"{name}.bpf.o"
        subprocess.run(
            [
                clang, "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{TARGET_ARCH}",
                f"-fdebug-prefix-map={HERE}=.", "-I", ".",
                "-Wall", "-Werror", "-Wno-unused-function", "-Wno-compare-distinct-pointer-types",
                "-c", f"{name}.bpf.c", "-o", str(out),
            ],
            cwd=HERE, check=True,
        )  # fmt: skip
        subprocess.run([strip, "-g", str(out)], check=True)
        return out.read_bytes()


def stale(manifest: dict) -> list[str]:
    """Programs whose object is missing, changed by hand, or older than its inputs."""
    found = []
    for name in PROGRAMS:
        entry = manifest.get("objects", {}).get(name, {})
        path = object_path(name)
        if (
            not path.exists()
            or entry.get("inputs") != inputs_digest(name)
            or entry.get("object") != sha256(path.read_bytes())
        ):
            found.append(name)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kpeek.sources.bpf.build")
    ap.add_argument("--force", action="store_true", help="rebuild every object")
    ap.add_argument("--check", action="store_true", help="exit 1 if any object is stale")
    args = ap.parse_args(argv)
    manifest = load_manifest()
    todo = list(PROGRAMS) if args.force else stale(manifest)
    if args.check:
        for name in todo:
            print(f"{name}.bpf.o is stale: run python -m kpeek.sources.bpf.build", file=sys.stderr)
        return 1 if todo else 0
    if not todo:
        return 0
    clang = _tool("clang", "clang-14")
    strip = _tool("llvm-strip", "llvm-strip-14")
    manifest["compiler"] = compiler_version(clang)
    for name in todo:
        data = compile_object(name, clang, strip)
        tmp = object_path(name).with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, object_path(name))
        manifest.setdefault("objects", {})[name] = {
            "inputs": inputs_digest(name),
            "object": sha256(data),
        }
        print(f"built {object_path(name).name} ({len(data)} bytes)")
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
