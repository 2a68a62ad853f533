"""kpeek.records.record against dataclasses.dataclass: the same class behaviour
(repr, equality, hashing, frozen guards, fields, replace) for every option
combination kpeek uses and those around them, and fewer compilations."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import subprocess
import sys

import pytest

from kpeek.records import record

_ADDRESS = re.compile(r" at 0x[0-9a-f]+")  # object.__repr__'s, different in each class
OPTIONS = [
    dict(zip(("frozen", "slots", "unsafe_hash", "eq", "repr"), values, strict=True))
    for values in itertools.product((False, True), repeat=5)
]


def make(decorator, options, explicit=None):
    """The same class body under ``decorator(**options)``."""

    class Sample:
        a: int
        b: str = "x"
        c: tuple = ()
        hidden: int = dataclasses.field(default=0, repr=False, compare=False)
        uncompared_hashed: int = dataclasses.field(default=0, compare=False, hash=True)

        if explicit == "hash":
            def __hash__(self) -> int:
                return 7
        elif explicit == "eq":
            def __eq__(self, other: object) -> bool:
                return True
        elif explicit == "repr":
            def __repr__(self) -> str:
                return "mine"

    return decorator(**options)(Sample)


def outcome(call):
    try:
        return ("ok", _ADDRESS.sub("", str(call())))
    except Exception as e:
        return ("raises", type(e).__name__)


def behaviour(cls) -> list:
    one, same, other = cls(1, "y", (2,), 5, 6), cls(1, "y", (2,), 9, 6), cls(2)
    nan = cls(math.nan)
    seen = [
        outcome(lambda: repr(one)),
        one == same, one == other, one != same, one == (1, "y", (2,)),
        outcome(lambda: hash(one) == hash(same)),
        outcome(lambda: hash(one) == hash(cls(1, "y", (2,), 5, 7))),
        outcome(lambda: hash(one) == 7),
        nan == nan, nan == cls(math.nan),
        outcome(lambda: setattr(one, "a", 3)),
        outcome(lambda: delattr(one, "b")),
        [f.name for f in dataclasses.fields(cls)],
        dataclasses.asdict(same),
        cls.__match_args__,
        hasattr(cls, "__slots__"),
    ]
    seen.append(outcome(lambda: repr(dataclasses.replace(other, b="z"))))
    return seen


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(k for k, v in o.items() if v))
@pytest.mark.parametrize("explicit", [None, "hash", "eq", "repr"])
def test_a_record_behaves_as_the_dataclass(options: dict, explicit: str | None) -> None:
    expected = outcome(lambda: behaviour(make(dataclasses.dataclass, options, explicit)))
    got = outcome(lambda: behaviour(make(record, options, explicit)))
    assert got == expected


def test_ordered_and_bare_forms() -> None:
    @record(order=True, frozen=True)
    class Ordered:
        a: int

    @record
    class Bare:
        a: int

    assert sorted([Ordered(2), Ordered(1)]) == [Ordered(1), Ordered(2)]
    assert Bare(1) == Bare(1) and repr(Bare(1)).endswith(".Bare(a=1)")
    with pytest.raises(TypeError):
        hash(Bare(1))
    assert Bare.__repr__.__qualname__.endswith("Bare.__repr__")


def test_a_record_compiles_only_its_init() -> None:
    """The saving itself: dataclasses compiles source for one method of a
    record (its __init__), four of a dataclass."""
    probe = """
import builtins, dataclasses
compiled = []
real = builtins.exec
def counting(source, *a, **k):
    compiled.append(source)
    return real(source, *a, **k)
dataclasses.exec = counting
from kpeek.records import record
class A:
    a: int
    b: str = ""
record(slots=True, unsafe_hash=True)(A)
print(len(compiled))
dataclasses.dataclass(slots=True, unsafe_hash=True)(A)
print(len(compiled))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "5"]
