"""Shared pytest configuration: tests import helpers from this directory."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from lab.fixtures import lab_dumps  # noqa: F401  (the QEMU lab's session fixture)
