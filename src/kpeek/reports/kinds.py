"""Report kinds: what class of bug a title names.

A kind is a short, stable word for the class of problem, independent of
which checker caught it: ``use-after-free`` whether KASAN or KFENCE saw it,
``hang`` for hung tasks, RCU stalls and soft lockups alike. The checker is
kept separately as the report's *detector*, the access direction as
*access*.
"""

from __future__ import annotations

from kpeek.records import record

KINDS: dict[str, str] = {
    "use-after-free": "memory used after it was freed",
    "invalid-access": "access outside a valid object (out of bounds, wild pointer)",
    "invalid-free": "double free or free of a pointer that was not allocated",
    "memory-corruption": "an object's memory was overwritten out of bounds",
    "null-deref": "dereference of a NULL (or near-NULL) pointer",
    "bad-access": "kernel fault on a bad address (paging request, corrupted list)",
    "uninit-value": "use of uninitialised memory",
    "info-leak": "uninitialised kernel memory copied to user space or a device",
    "data-race": "unsynchronised concurrent access",
    "undefined-behaviour": "undefined behaviour (shift, overflow ...) caught by UBSAN",
    "lockdep": "locking rule broken: possible deadlock, bad unlock, RCU misuse",
    "atomic-sleep": "sleeping in atomic context",
    "hang": "task hung, CPU stalled or locked up",
    "memory-leak": "memory allocated and never freed",
    "refcount": "reference count over- or underflow",
    "bug": "explicit BUG() assertion failed",
    "warning": "WARN() assertion failed",
    "crash": "fatal fault or panic (general protection fault, invalid opcode, ...)",
    "reboot": "the machine rebooted unexpectedly",
    "tool-failure": "the fuzzer or test harness itself failed",
    "unknown": "not classified",
}


@record(frozen=True)
class Classification:
    """Kind, detector and access direction of a report."""

    kind: str
    detector: str | None = None
    access: str | None = None


# (title prefix, kind). First match wins, so specific prefixes come first.
_BY_PREFIX: tuple[tuple[str, str], ...] = (
    ("KFENCE: use-after-free", "use-after-free"),
    ("KFENCE: invalid free", "invalid-free"),
    ("KFENCE: memory corruption", "memory-corruption"),
    ("KFENCE:", "invalid-access"),
    ("KMSAN: uninit-value", "uninit-value"),
    ("KMSAN: kernel-infoleak-after-free", "use-after-free"),
    ("KMSAN: kernel-usb-infoleak-after-free", "use-after-free"),
    ("KMSAN: use-after-free", "use-after-free"),
    ("KMSAN: kernel-infoleak", "info-leak"),
    ("KMSAN: kernel-usb-infoleak", "info-leak"),
    ("KMSAN:", "uninit-value"),
    ("KASAN: null-ptr-deref", "null-deref"),
    ("KASAN: slab-use-after-free", "use-after-free"),
    ("KASAN: use-after-free", "use-after-free"),
    ("KASAN: double-free or invalid-free", "invalid-free"),
    ("KASAN: invalid-free", "invalid-free"),
    ("KASAN:", "invalid-access"),
    ("BUG: unable to handle kernel NULL pointer dereference", "null-deref"),
    ("BUG: unable to handle kernel paging request", "bad-access"),
    ("BUG: corrupted list", "bad-access"),
    ("WARNING: refcount bug", "refcount"),
    ("UBSAN: array-index-out-of-bounds", "invalid-access"),
    ("UBSAN:", "undefined-behaviour"),
    ("KCSAN:", "data-race"),
    ("BUG: bad unlock balance", "lockdep"),
    ("BUG: held lock freed", "lockdep"),
    ("BUG: rwlock", "lockdep"),
    ("BUG: spinlock", "lockdep"),
    ("BUG: still has locks held", "lockdep"),
    ("BUG: using", "lockdep"),
    ("BUG: lock held when returning to user space", "lockdep"),
    ("BUG: workqueue leaked lock or atomic", "lockdep"),
    ("BUG: MAX_STACK_TRACE_ENTRIES too low", "lockdep"),
    ("WARNING: bad unlock balance", "lockdep"),
    ("WARNING: held lock freed", "lockdep"),
    ("WARNING: lock held", "lockdep"),
    ("WARNING: locking bug", "lockdep"),
    ("WARNING: nested lock was not taken", "lockdep"),
    ("WARNING: still has locks held", "lockdep"),
    ("WARNING: suspicious RCU usage", "lockdep"),
    ("INFO: suspicious RCU usage", "lockdep"),
    ("INFO: trying to register non-static key", "lockdep"),
    ("inconsistent lock state", "lockdep"),
    ("possible deadlock", "lockdep"),
    ("BUG: scheduling while atomic", "atomic-sleep"),
    ("BUG: sleeping function called from invalid context", "atomic-sleep"),
    ("memory leak in", "memory-leak"),
    ("BUG: bad usercopy", "bug"),
    ("kernel BUG", "bug"),
    ("BUG: Bad page", "bug"),
    ("BUG: Dentry still in use", "bug"),
    ("BUG: stack guard page was hit", "crash"),
    ("BUG: soft lockup", "hang"),
    ("BUG: workqueue lockup", "hang"),
    ("INFO: rcu detected stall", "hang"),
    ("INFO: task can't die", "hang"),
    ("INFO: task hung", "hang"),
    ("Alignment trap", "crash"),
    ("BUG: Object already free", "crash"),
    ("Internal error", "crash"),
    ("PANIC: double fault", "crash"),
    ("Unhandled fault", "crash"),
    ("VFS: Busy inodes after unmount", "crash"),
    ("VFS: Close: file count is zero", "crash"),
    ("divide error", "crash"),
    ("general protection fault", "crash"),
    ("invalid opcode", "crash"),
    ("kernel panic:", "crash"),
    ("kernel stack overflow", "crash"),
    ("panic:", "crash"),
    ("stack segment fault", "crash"),
    ("trusty:", "crash"),
    ("unregister_netdevice: waiting for", "crash"),
    ("unexpected kernel reboot", "reboot"),
    ("SYZFAIL", "tool-failure"),
    ("SYZFATAL", "tool-failure"),
    ("WARNING in", "warning"),
    ("WARNING:", "warning"),
)

_DETECTORS = ("KASAN", "KFENCE", "KMSAN", "KCSAN", "UBSAN")


# Report start markers whose titles carry no fixed prefix.
_BY_HEADER = {"rust_kernel: panicked": "crash", "Oops: ": "crash"}


def classify(title: str, header: str | None = None) -> Classification:
    """The kind of report a title names (``unknown`` when no rule fits).

    ``header`` is the start marker the report was found by, for reports
    whose title is free text (a Rust panic message).
    """
    kind = _BY_HEADER.get(header or "", "unknown")
    for prefix, k in _BY_PREFIX:
        if title.startswith(prefix):
            kind = k
            break
    detector = None
    for name in _DETECTORS:
        if title.startswith(name + ":"):
            detector = name.lower()
    if kind == "lockdep" or title.startswith(("possible deadlock", "inconsistent lock")):
        detector = detector or "lockdep"
    access = None
    words = title.split(" in ", 1)[0].lower().split()
    if "read" in words:
        access = "read"
    elif "write" in words:
        access = "write"
    return Classification(kind, detector, access)
