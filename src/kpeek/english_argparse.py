"""argparse, in English only, for the cost of argparse alone.

argparse has gettext translate each message it makes, and each lookup
searches the disk for a catalog (importing locale first): 3.7 ms of every
start-up for six messages that no catalog translates, and 1 ms more to
import gettext itself. kpeek speaks English: ``from kpeek.english_argparse
import argparse`` imports argparse with a stand-in gettext (dropped after)
and makes its two translation functions identities.
"""

from __future__ import annotations

import sys
import types


def _english(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural


if "argparse" not in sys.modules and "gettext" not in sys.modules:
    _stand_in = sys.modules["gettext"] = types.ModuleType("gettext")
    _stand_in.gettext, _stand_in.ngettext = str, _english  # type: ignore[attr-defined]
    try:
        import argparse
    finally:
        del sys.modules["gettext"]
import argparse  # noqa: E402 - argparse as imported above, or as it was

argparse._ = str  # type: ignore[attr-defined]
argparse.ngettext = _english  # type: ignore[attr-defined]

__all__ = ["argparse"]
