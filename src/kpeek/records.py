"""``record``: ``dataclasses.dataclass`` that compiles less at import.

A dataclass compiles Python source for each method it adds: ``__init__``,
``__repr__``, ``__eq__`` and ``__hash__``, each with its own ``exec``. Those
compilations were most of the 7 ms that the 13 dataclasses of a ``kpeek
files PID`` cost its start-up. ``record`` lets dataclasses make the class,
its fields and ``__init__`` (and a frozen class's guards), and gives it
``__repr__``, ``__eq__`` and ``__hash__`` as closures over the class's field
names, compiled once for every class: same results, same ``fields()``,
``replace()`` and ``asdict()``. Only an ordered class (``order=True``) is
left to dataclasses whole, as is the recursion guard of its ``__repr__``
(no record holds itself).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def record(cls: type | None = None, /, *, repr: bool = True, eq: bool = True,
           order: bool = False, unsafe_hash: bool = False, frozen: bool = False,
           **options: Any) -> Any:
    """``@dataclass(...)`` with the same options and the same class."""

    def wrap(cls: type) -> type:
        if order:
            return dataclass(cls, repr=repr, eq=eq, order=order, unsafe_hash=unsafe_hash,
                             frozen=frozen, **options)
        own = dict(cls.__dict__)  # before dataclass (slots=True makes a new class)
        made = dataclass(cls, repr=False, eq=False, frozen=frozen, **options)
        _add_methods(made, own, repr=repr, eq=eq, unsafe_hash=unsafe_hash, frozen=frozen)
        return made

    return wrap if cls is None else wrap(cls)


def _add_methods(cls: type, own: dict[str, Any], *, repr: bool, eq: bool,
                 unsafe_hash: bool, frozen: bool) -> None:
    """What dataclass(repr=, eq=, unsafe_hash=, frozen=) adds, as it adds it:
    never over a method the class defines itself; __hash__ by dataclasses'
    table (an eq class that is neither frozen nor unsafe_hash is unhashable)."""
    every = fields(cls)
    if repr and "__repr__" not in own:
        _set(cls, "__repr__", _repr([f.name for f in every if f.repr]))
    if eq and "__eq__" not in own:
        _set(cls, "__eq__", _eq(_key([f.name for f in every if f.compare])))
    explicit_hash = own.get("__hash__") is not None or (
        "__hash__" in own and "__eq__" not in own
    )
    if unsafe_hash or (eq and frozen):
        if explicit_hash and unsafe_hash:
            raise TypeError(f"Cannot overwrite attribute __hash__ in class {cls.__name__}")
        if not explicit_hash:
            hashed = [f.name for f in every if (f.compare if f.hash is None else f.hash)]
            _set(cls, "__hash__", _hash(_key(hashed)))
    elif eq and not explicit_hash:
        cls.__hash__ = None  # type: ignore[assignment]


def _set(cls: type, name: str, method: Callable) -> None:
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    setattr(cls, name, method)


def _key(names: list[str]) -> Callable[[Any], tuple]:
    """The tuple of an object's named fields (what dataclasses compare)."""
    if len(names) > 1:
        return attrgetter(*names)  # a tuple, made in C
    if not names:
        return lambda obj: ()
    one = attrgetter(names[0])
    return lambda obj: (one(obj),)


def _repr(names: list[str]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        shown = ", ".join([f"{name}={getattr(self, name)!r}" for name in names])
        return f"{self.__class__.__qualname__}({shown})"

    return __repr__


def _eq(key: Callable[[Any], tuple]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    return __eq__


def _hash(key: Callable[[Any], tuple]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(key(self))

    return __hash__
