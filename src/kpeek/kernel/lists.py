"""Walk kernel linked lists (list_head, hlist) with integrity checks.

A walk is always bounded (``max_entries``) and stops at the first sign of
corruption, reporting it as a :class:`ListFinding` that names the node where
the walk broke:

- ``cycle``: an entry points back to an earlier entry, not to the head;
- ``broken-backlink``: ``entry->next->prev != entry`` (or hlist ``pprev``);
- ``poison``: LIST_POISON1/2 in next/prev: an entry used after list_del;
- ``self-loop``: an entry whose next (or prev) points to itself, as after a
  slab object was list_add'ed a second time;
- ``unreadable``: a pointer into memory that cannot be read (or NULL);
- ``max-reached``: the bound was hit before the list ended (not corruption).

Layouts are the kernel's: ``struct list_head { next; prev; }``,
``struct hlist_head { first; }``, ``struct hlist_node { next; pprev; }``,
64-bit little-endian pointers.
"""

from __future__ import annotations

import struct
from dataclasses import field

from kpeek.kernel.memory import KernelMemory, MemoryReadError
from kpeek.records import record

# include/linux/poison.h: 0x100/0x122 + POISON_POINTER_DELTA (0xdead000000000000
# on x86-64 and arm64, CONFIG_ILLEGAL_POINTER_VALUE).
LIST_POISON1 = 0xDEAD000000000100
LIST_POISON2 = 0xDEAD000000000122
POISONS = {LIST_POISON1: "LIST_POISON1", LIST_POISON2: "LIST_POISON2"}

DEFAULT_MAX = 100_000

_TWO = struct.Struct("<QQ")
_ONE = struct.Struct("<Q")

CYCLE = "cycle"
BROKEN_BACKLINK = "broken-backlink"
POISON = "poison"
SELF_LOOP = "self-loop"
UNREADABLE = "unreadable"
MAX_REACHED = "max-reached"
CORRUPTION_KINDS = (CYCLE, BROKEN_BACKLINK, POISON, SELF_LOOP, UNREADABLE)


@record(frozen=True)
class ListFinding:
    """Why a walk stopped early.

    ``node`` is the list node (address of the list_head/hlist_node) where the
    walk broke, ``index`` its position in the walk (-1 for the head itself),
    ``pointer`` the offending pointer value.
    """

    kind: str
    node: int
    index: int
    pointer: int
    message: str

    @property
    def is_corruption(self) -> bool:
        return self.kind in CORRUPTION_KINDS


@record
class ListWalk:
    """The result of a walk: nodes in order and, if it stopped early, why.

    ``entries`` are the containing objects' addresses (node - entry_offset).
    """

    head: int
    entry_offset: int = 0
    nodes: list[int] = field(default_factory=list)
    finding: ListFinding | None = None

    @property
    def entries(self) -> list[int]:
        return [n - self.entry_offset for n in self.nodes]

    @property
    def complete(self) -> bool:
        """True when the walk came back to the head (or hlist end) cleanly."""
        return self.finding is None

    def __len__(self) -> int:
        return len(self.nodes)


def _name(ptr: int) -> str:
    return POISONS.get(ptr, f"0x{ptr:x}")


def walk_list(
    memory: KernelMemory,
    head: int,
    *,
    entry_offset: int = 0,
    max_entries: int = DEFAULT_MAX,
) -> ListWalk:
    """Walk the ``list_head`` at ``head`` (the list's head, not an entry).

    Returns a :class:`ListWalk`; never raises for a corrupted list (the
    corruption is the walk's ``finding``). ``max_entries`` always applies.
    Raises MemoryReadError only when the head itself cannot be read.
    """
    walk = ListWalk(head, entry_offset)
    head_next, head_prev = _TWO.unpack(memory.read(head, 16))
    seen: dict[int, int] = {head: -1}
    nodes = walk.nodes
    prev = head
    cur = head_next

    def stop(kind: str, node: int, pointer: int, message: str) -> ListWalk:
        walk.finding = ListFinding(kind, node, seen.get(node, len(nodes)), pointer, message)
        return walk

    if head_next in POISONS or head_prev in POISONS:
        return stop(POISON, head, head_next if head_next in POISONS else head_prev,
                    f"the head's next/prev is {_name(head_next)}/{_name(head_prev)}: "
                    "the head itself was list_del'ed")
    while True:
        if cur == head:
            if head_prev != prev:
                return stop(BROKEN_BACKLINK, head, head_prev,
                            f"the last entry 0x{prev:x} points to the head, but the head's "
                            f"prev is 0x{head_prev:x}")
            return walk
        if cur in seen:
            return stop(CYCLE, prev, cur,
                        f"entry 0x{prev:x} points back to entry #{seen[cur]} "
                        f"0x{cur:x}, not to the head: the list has a cycle that skips the head")
        if len(nodes) >= max_entries:
            walk.finding = ListFinding(MAX_REACHED, cur, len(nodes), cur,
                                       f"stopped after {max_entries} entries (--max)")
            return walk
        if cur == 0:
            return stop(UNREADABLE, prev, 0, f"entry 0x{prev:x} has a NULL next pointer")
        try:
            nxt, back = _TWO.unpack(memory.read(cur, 16))
        except MemoryReadError:
            return stop(UNREADABLE, prev, cur,
                        f"entry 0x{prev:x} points to 0x{cur:x}, which cannot be read")
        index = len(nodes)
        seen[cur] = index
        if nxt in POISONS or back in POISONS:
            return stop(POISON, cur, nxt if nxt in POISONS else back,
                        f"entry #{index} 0x{cur:x} has next={_name(nxt)} prev={_name(back)}: "
                        "it was removed with list_del but is still linked (use after list_del)")
        if nxt == cur or back == cur:
            return stop(SELF_LOOP, cur, cur,
                        f"entry #{index} 0x{cur:x} points to itself "
                        f"({'next' if nxt == cur else 'prev'}): added twice, or reused "
                        "after free without list_del")
        if back != prev:
            return stop(BROKEN_BACKLINK, cur, back,
                        f"entry #{index} 0x{cur:x} has prev=0x{back:x}, but was reached "
                        f"from 0x{prev:x}: next->prev does not point back")
        nodes.append(cur)
        prev, cur = cur, nxt


def walk_hlist(
    memory: KernelMemory,
    head: int,
    *,
    entry_offset: int = 0,
    max_entries: int = DEFAULT_MAX,
) -> ListWalk:
    """Walk the ``hlist_head`` at ``head``: NULL-terminated, with pprev checks.

    Same findings and guarantees as :func:`walk_list`.
    """
    walk = ListWalk(head, entry_offset)
    (first,) = _ONE.unpack(memory.read(head, 8))
    seen: dict[int, int] = {}
    nodes = walk.nodes
    prev = head  # address of the pointer that led here (head.first or node.next)
    cur = first

    def stop(kind: str, node: int, pointer: int, message: str) -> ListWalk:
        walk.finding = ListFinding(kind, node, seen.get(node, -1 if node == head else len(nodes)),
                                   pointer, message)
        return walk

    while cur != 0:
        if cur in POISONS:
            return stop(POISON, prev, cur,
                        f"0x{prev:x} has next={_name(cur)}: it was removed with hlist_del "
                        "but is still linked")
        if cur in seen:
            return stop(CYCLE, prev, cur,
                        f"entry 0x{prev:x} points back to entry #{seen[cur]} 0x{cur:x}: "
                        "the hlist has a cycle")
        if len(nodes) >= max_entries:
            walk.finding = ListFinding(MAX_REACHED, cur, len(nodes), cur,
                                       f"stopped after {max_entries} entries (--max)")
            return walk
        try:
            nxt, pprev = _TWO.unpack(memory.read(cur, 16))
        except MemoryReadError:
            return stop(UNREADABLE, prev, cur,
                        f"0x{prev:x} points to 0x{cur:x}, which cannot be read")
        index = len(nodes)
        seen[cur] = index
        if nxt in POISONS or pprev in POISONS:
            return stop(POISON, cur, nxt if nxt in POISONS else pprev,
                        f"entry #{index} 0x{cur:x} has next={_name(nxt)} pprev={_name(pprev)}: "
                        "removed with hlist_del but still linked (use after hlist_del)")
        if nxt == cur:
            return stop(SELF_LOOP, cur, cur, f"entry #{index} 0x{cur:x} points to itself")
        if pprev != prev:
            return stop(BROKEN_BACKLINK, cur, pprev,
                        f"entry #{index} 0x{cur:x} has pprev=0x{pprev:x}, but was reached "
                        f"from 0x{prev:x}")
        nodes.append(cur)
        prev, cur = cur, nxt
    return walk
