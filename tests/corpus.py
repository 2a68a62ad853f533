"""Where the kernel report corpus is (shared/corpus/kernel-reports), for every
test that reads it: one lookup, so a checkout anywhere finds it the same way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def corpus_dir() -> Path | None:
    """$KPEEK_CORPUS, else shared/ beside the repository or one of its parents
    (a CI clone may sit deeper), else the workplace's /work/shared."""
    env = os.environ.get("KPEEK_CORPUS")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for base in (*REPO.parents, Path("/work")):
        path = base / "shared" / "corpus" / "kernel-reports"
        if path.is_dir():
            return path
    return None


def require_corpus() -> Path:
    """The corpus folder; a test without it fails under CI and skips elsewhere."""
    path = corpus_dir()
    if path is None:
        message = "kernel report corpus not found (shared/corpus/kernel-reports, or $KPEEK_CORPUS)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def corpus_logs() -> list[bytes]:
    """The console log of every corpus file (its header lines stripped)."""
    return [f.read_bytes().split(b"\n\n", 1)[-1] for f in sorted(require_corpus().iterdir())
            if f.is_file() and not f.name.startswith("README")]
