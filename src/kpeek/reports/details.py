"""The facts in a report beyond its title: address, taint, trace, code bytes.

All of it is read from the report's own lines; nothing here touches the
running kernel. Interpretations (what an address suggests, what a taint
flag means) are hints for the reader and say so.
"""

from __future__ import annotations

import re
from dataclasses import field

from kpeek.lazyre import lazy
from kpeek.records import record
from kpeek.reports.console import ConsoleLine
from kpeek.reports.demangle import demangle

# ---------------------------------------------------------------- taint

TAINT_FLAGS: dict[str, str] = {
    "P": "proprietary module loaded",
    "F": "module force-loaded",
    "S": "kernel running on out-of-spec system (or SMP-unsafe CPU)",
    "R": "module force-unloaded",
    "M": "machine check exception happened",
    "B": "bad page referenced or unexpected page flags: memory was corrupted before",
    "U": "taint requested by user space",
    "D": "kernel died recently (OOPS or BUG): this report may be a consequence",
    "A": "ACPI table overridden",
    "W": "a WARNING was issued earlier",
    "C": "staging driver loaded",
    "I": "working around a platform firmware bug",
    "O": "out-of-tree module loaded",
    "E": "unsigned module loaded",
    "L": "soft lockup happened earlier",
    "K": "kernel has been live patched",
    "X": "auxiliary taint (distribution-defined)",
    "T": "kernel built with struct randomization",
    "N": "in-kernel test (kunit) has run",
}

_TAINTED = lazy(r"(?:^|\s)(Not tainted|Tainted: ([A-Z ]+?))\s+(\d+\.\d+\S*)")
_TAINT_LIST = lazy(r"^Tainted: ((?:\[[A-Z]\]=\w+,? ?)+)$")
# "INFO: task kworker/u4:2:51 blocked for more than 143 seconds." (comm may hold ':')
_HUNG_TASK = lazy(r"INFO: task (.{1,64}):(\d+) (?:blocked (?:in I/O wait )?for|can't die for)"
                        r" more than (\d+) seconds")
_TASK = lazy(r"CPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (.{1,64}?) (?:Not tainted|Tainted)")

# ---------------------------------------------------------------- addresses

_ADDRESS_PATTERNS: tuple[re.Pattern[str], ...] = (
    lazy(r"unable to handle (?:kernel )?(?:paging request|NULL pointer dereference|page fault"
               r" for address)(?: at|:)(?: virtual address)? (?:0x)?([0-9a-f]{1,16})\b", re.I),
    lazy(r"NULL pointer dereference, address: (?:0x)?([0-9a-f]{1,16})\b"),
    lazy(r"(?:Read|Write) (?:of size \d+ )?at addr (?:0x)?([0-9a-f]{1,16})\b"),
    lazy(r"probably for non-canonical address (0x[0-9a-f]{1,16})"),
    lazy(r"(?:read|write) at (0x[0-9a-f]{1,16}) \(in kfence"),
    lazy(r"null-ptr-deref in range \[(0x[0-9a-f]{1,16})-"),
)
# Lines that say in words what went wrong; shown as they are.
_EXPLANATIONS = lazy(
    r"^(refcount_t: [a-z0-9 ;-]+\.?"
    r"|list_[a-z_]+ corruption.*"
    r"|.*(?:double-free|double free|use-after-free|out-of-bounds).{0,40}detected.*"
    r"|kernel BUG at \S+"
    r"|.*Kernel stack is corrupted in: .*"
    r"|#PF: .*)$")
# How one of those lines starts, or words it holds: most lines skip the
# regex's ".*" tries.
_EXPLANATION_STARTS = ("refcount_t: ", "list_", "kernel BUG at ", "#PF: ")


def _explains(text: str) -> bool:
    return ((text.startswith(_EXPLANATION_STARTS) or "detected" in text
             or "Kernel stack is corrupted in: " in text)
            and _EXPLANATIONS.match(text) is not None)


# "list_del corruption, ffff...->next is LIST_POISON1 (dead000000000100)"
_LIST_POISON_ADDRESS = lazy(r"is LIST_POISON[12] \((?:0x)?([0-9a-f]{16})\)")
# CR2/FAR are not used: outside a page fault they hold some older fault's address.
def _may_have_address(text: str) -> bool:
    return "ddr" in text or "request" in text or "kfence" in text or "range [" in text
_NOT_FRAMES = ("RIP:", "IP:", "pc :", "lr :", "PC is at", "LR is at")

_REGISTERS = lazy(r"\b(R[A-Z0-9]{1,2}|x\d{1,2}|lr|sp)\s?: ?(?:0x)?([0-9a-f]{16})\b")

KASAN_SHADOW_OFFSET = 0xDFFFFC0000000000
LIST_POISON1 = 0xDEAD000000000100
LIST_POISON2 = 0xDEAD000000000122
_POISON_BYTES = {
    0x6B: "slab free poison (POISON_FREE 0x6b): the object was freed, a use-after-free",
    0x5A: "slab in-use poison (POISON_INUSE 0x5a): memory read before it was initialised",
    0xA5: "slab end-of-object poison (POISON_END 0xa5)",
    0xCC: "active slab red zone (0xcc): an out-of-bounds access next to an object",
    0xBB: "inactive slab red zone (0xbb): an out-of-bounds access next to a free object",
}


def interpret_address(addr: int, x86: bool = True) -> list[str]:
    """Hints about what an address suggests (NULL page, poison, non-canonical ...)."""
    notes: list[str] = []
    if addr < 0x10000:
        notes.append(f"in the NULL page: a NULL pointer dereference (field at offset {addr:#x}"
                     " of a NULL struct pointer)")
        return notes
    # The nearer LIST_POISON (a field of the entry may be accessed at an offset).
    delta, name = min((addr - LIST_POISON1, "LIST_POISON1"), (addr - LIST_POISON2, "LIST_POISON2"),
                      key=lambda pair: abs(pair[0]))
    if abs(delta) < 0x40:
        where = "" if delta == 0 else f" {'+' if delta > 0 else '-'} {abs(delta):#x}"
        notes.append(f"{name}{where}: a list entry used after list_del() removed it")
        return notes
    low = addr & 0xFFFFFFFF
    for byte, meaning in _POISON_BYTES.items():
        pattern = int.from_bytes(bytes([byte]) * 4, "little")
        if low == pattern or (addr >> 32) == pattern:
            notes.append(meaning)
            return notes
    if (addr & 0xFFFFFFFF) == 0xDEADBEEF or (addr >> 48) == 0xDEAD:
        notes.append("a 0xdead... poison pattern: a pointer poisoned on free or removal")
    if x86:
        top = addr >> 47
        if top not in (0, 0x1FFFF):
            notes.append("non-canonical address: a corrupted or poisoned pointer (x86-64 raises"
                         " a general protection fault, not a page fault)")
            shadow_origin = (addr - KASAN_SHADOW_OFFSET) << 3
            if KASAN_SHADOW_OFFSET <= addr < KASAN_SHADOW_OFFSET + (1 << 44):
                notes.append(f"KASAN shadow of {shadow_origin:#x}: the faulting access was to"
                             f" {shadow_origin:#x}..{shadow_origin + 7:#x}"
                             + (" (near NULL)" if shadow_origin < 0x10000 else ""))
            return notes
        if addr < 0x0000800000000000:
            notes.append("a user-space address used by the kernel (missing copy_from_user,"
                         " or SMAP/SMEP stopped it)")
        elif 0xFFFFFFFFA0000000 <= addr < 0xFFFFFFFFFF000000:
            notes.append("in module space: code or data of a loadable module"
                         " (maybe one already unloaded)")
        elif 0xFFFFFFFF80000000 <= addr < 0xFFFFFFFFA0000000:
            notes.append("in the kernel image (text or static data)")
        elif 0xFFFFC90000000000 <= addr < 0xFFFFE90000000000:
            notes.append("in vmalloc space (vmalloc memory, task stacks: a guard page hit"
                         " means a stack overflow)")
        elif 0xFFFFEA0000000000 <= addr < 0xFFFFEB0000000000:
            notes.append("in the struct page array (vmemmap)")
        elif 0xFFFF888000000000 <= addr < 0xFFFFC88000000000:
            notes.append("in the direct map of physical memory (slab and page allocations)")
    return notes


# ---------------------------------------------------------------- call trace

# "func+0x1/0x2", then a module and a source place in either order: the
# kernel prints " [mod]", syzkaller's symbolizer puts " file.c:12" right
# after the offset.
_SOURCE = r"[\w\-/.+]+\.[A-Za-z]+:\d+"
_FRAME = lazy(
    r"^\s*(?:\[<(?:0x)?([0-9a-f]+)>\]\s*)?(\?\s+)?([A-Za-z0-9_.$]+)\+(0x[0-9a-f]+)/(0x[0-9a-f]+)"
    rf"(?:\s+({_SOURCE}))?(?:\s+\[([A-Za-z0-9_\-]+)[^\]]*\])?(?:\s+({_SOURCE}))?"
)
# A function the symbolizer found inlined at the frame below: "f file.h:12 [inline]".
_INLINE_FRAME = lazy(
    rf"^\s*(?:\[<(?:0x)?[0-9a-f]+>\]\s*)?(\?\s+)?([A-Za-z0-9_.$]+) ({_SOURCE}) \[inline\]"
)
_RAW_ADDRESS_FRAME = lazy(r"^\s*(\?\s+)?\[<(?:0x)?([0-9a-f]{8,16})>\]\s*$")
_SECTION = lazy(
    r"^(Call Trace|Call trace|Backtrace|stack backtrace|Allocated by task \d+|Freed by task \d+"
    r"|Last potentially related work creation|Second to last potentially related work creation"
    r"|Uninit was (?:created|stored to memory) at|Local variable .* created at"
    r"|backtrace(?: \(crc [0-9a-f]+\))?|page last (?:allocated|free)[^:]*|Exception stack\(.*?\))"
    r":?"
)
_MARKER = lazy(r"^\s*(</?(?:IRQ|TASK|NMI|EOI|SOFTIRQ)>)\s*$")


# Not frozen: a frozen dataclass's __init__ costs 2.5x (a log has thousands
# of frames); hashable all the same, and never changed after parsing.
@record(slots=True, unsafe_hash=True)
class Frame:
    """One call-trace entry. ``reliable`` is False for '?' frames (stale stack words)."""

    function: str
    offset: int
    size: int
    module: str | None = None
    reliable: bool = True
    address: int | None = None
    source: str | None = None
    section: str = "Call Trace"
    # Inlined into the frame below it (a symbolized log's "[inline]" line):
    # no offset and size of its own (both 0).
    inline: bool = False


@record(frozen=True)
class CodeBytes:
    """The ``Code:`` bytes around the faulting instruction.

    ``fault_offset`` indexes the byte marked ``<..>`` (or ``(..)`` on arm).
    ``arch`` is "x86_64", "arm64" or "arm-thumb", guessed from the word width.
    """

    data: bytes
    fault_offset: int
    arch: str


@record
class Details:
    """Facts from a report's lines (all optional: reports differ)."""

    fault_address: int | None = None
    address_notes: list[str] = field(default_factory=list)
    register_notes: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    cpu: int | None = None
    pid: int | None = None
    comm: str | None = None
    blocked_seconds: int | None = None  # hung task: "blocked for more than N seconds"
    kernel_release: str | None = None
    tainted: bool | None = None
    taint_flags: list[tuple[str, str]] = field(default_factory=list)
    ip: str | None = None
    user_mode: bool = False
    call_trace: list[Frame] = field(default_factory=list)
    code: CodeBytes | None = None
    arch: str | None = None


def extract_details(lines: list[ConsoleLine], prefix: list[str] = ()) -> Details:
    """Details from a report's lines (unreliable '?' frames included).

    ``prefix`` are the lines just before the report's start of the same
    context: messages such as "list_del corruption ..." come before it.
    """
    d = Details()
    for text in prefix:
        if "LIST_POISON" in text and d.fault_address is None:
            m = _LIST_POISON_ADDRESS.search(text)
            if m:
                d.fault_address = int(m.group(1), 16)
        if _explains(text.strip()):
            d.messages.append(text.strip()[:200])
    section = "Call Trace"
    prev_text = ""
    for line in lines:
        text = line.text
        stripped = text.strip()
        if d.fault_address is None and _may_have_address(text):
            for pattern in _ADDRESS_PATTERNS:
                m = pattern.search(stripped)
                if m:
                    d.fault_address = int(m.group(1), 16)
                    break
        if d.fault_address is None and "LIST_POISON" in text:
            m = _LIST_POISON_ADDRESS.search(text)
            if m:
                d.fault_address = int(m.group(1), 16)
        if len(d.messages) < 6 and _explains(stripped):
            d.messages.append(stripped[:200])
        if d.pid is None and "INFO: task " in text:
            m = _HUNG_TASK.search(text)
            if m:
                d.comm, d.pid, d.blocked_seconds = m.group(1), int(m.group(2)), int(m.group(3))
        if d.pid is None and "PID:" in text:
            m = _TASK.search(text)
            if m:
                d.cpu, d.pid, d.comm = int(m.group(1)), int(m.group(2)), m.group(3)
        if "ainted" in text:
            _read_taint(d, stripped)
        if d.ip is None and stripped.startswith(("RIP:", "IP:", "pc :", "PC is at", "NIP")):
            d.arch = d.arch or _arch_of_ip_line(stripped)
            d.user_mode = stripped.startswith("RIP: 0033:")
            fm = re.search(r"([A-Za-z0-9_.]+\+0x[0-9a-f]+/0x[0-9a-f]+)", stripped)
            if fm:
                d.ip = fm.group(1)
        if stripped.endswith(":") or stripped.startswith("Exception stack"):
            sm = _SECTION.match(stripped)
            if sm:
                section = sm.group(1)
        if "<" in text:
            mm = _MARKER.match(text)
            if mm and mm.group(1) in ("<IRQ>", "<NMI>", "<SOFTIRQ>"):
                section = f"Call Trace {mm.group(1)}"
            elif mm and mm.group(1) in ("</IRQ>", "<TASK>", "</NMI>", "</SOFTIRQ>"):
                section = "Call Trace"
        if "+0x" in text and not stripped.startswith(_NOT_FRAMES):
            fm = _FRAME.match(text)
            if fm:
                d.call_trace.append(Frame(
                    function=demangle(fm.group(3)),
                    offset=int(fm.group(4), 16),
                    size=int(fm.group(5), 16),
                    module=fm.group(7),
                    reliable=not (line.questionable or fm.group(2)),
                    address=int(fm.group(1), 16) if fm.group(1) else None,
                    source=fm.group(6) or fm.group(8),
                    section=section,
                ))
        elif text.endswith("[inline]"):
            im = _INLINE_FRAME.match(text)
            if im:
                d.call_trace.append(Frame(
                    function=demangle(im.group(2)), offset=0, size=0,
                    reliable=not (line.questionable or im.group(1)),
                    source=im.group(3), section=section, inline=True,
                ))
        if d.code is None and stripped.startswith("Code:") and not prev_text.startswith(
                "RIP: 0033:"):
            d.code = parse_code_line(stripped)
        prev_text = stripped
        if stripped[:1] in "RxlsC" and ":" in stripped and _has_poison_word(stripped):
            for name, value in _REGISTERS.findall(stripped):
                notes = _register_hint(int(value, 16))
                if notes:
                    d.register_notes.append(f"{name} = {value}: {notes}")
    if d.fault_address is not None:
        d.address_notes = interpret_address(d.fault_address, x86=d.arch != "arm64")
    if d.code is not None and d.code.arch == "arm64" and d.arch == "arm":
        # 4-byte words on a 32-bit ARM kernel are ARM instructions.
        d.code = CodeBytes(d.code.data, d.code.fault_offset, "arm")
    if d.arch is None and d.code is not None:
        d.arch = d.code.arch
    d.register_notes = list(dict.fromkeys(d.register_notes))[:8]
    return d


def _arch_of_ip_line(line: str) -> str | None:
    """x86_64, arm64 or (32-bit) arm, from the line naming the faulting instruction."""
    if line.startswith("PC is at") or re.match(r"pc : \[<[0-9a-f]{8}>\]", line):
        return "arm"
    if line.startswith("pc :"):
        return "arm64"
    if line.startswith(("RIP:", "IP:")):
        return "x86_64"
    return None


def _read_taint(d: Details, text: str) -> None:
    if d.tainted is None:
        m = _TAINTED.search(text)
        if m:
            d.kernel_release = m.group(3)
            d.tainted = m.group(1) != "Not tainted"
            if m.group(2):
                d.taint_flags = [(c, TAINT_FLAGS.get(c, "unknown taint flag"))
                                 for c in m.group(2) if c.strip() and c != "G"]
    m = _TAINT_LIST.match(text)
    if m and not d.taint_flags:
        letters = re.findall(r"\[([A-Z])\]", m.group(1))
        d.taint_flags = [(c, TAINT_FLAGS.get(c, "unknown taint flag")) for c in letters]
        d.tainted = True


def _has_poison_word(line: str) -> bool:
    """Whether a register line may hold a value :func:`_register_hint` knows
    (the register regex costs more than these three searches)."""
    return "dead000000000" in line or "6b6b6b6b6b6b6b6b" in line or "5a5a5a5a5a5a5a5a" in line


def _register_hint(value: int) -> str:
    """A hint for register values that are recognisable poison."""
    if value in (LIST_POISON1, LIST_POISON2):
        return "LIST_POISON (a list entry after list_del)"
    for byte in (0x6B, 0x5A):
        if value == int.from_bytes(bytes([byte]) * 8, "little"):
            return _POISON_BYTES[byte]
    return ""


_CODE_TOKEN = lazy(r"^[<(]?([0-9a-fA-F]{2}|[0-9a-fA-F]{4}|[0-9a-fA-F]{8})[>)]?$")


def parse_code_line(line: str) -> CodeBytes | None:
    """Bytes of a ``Code:`` line; None when it holds none or no fault marker."""
    tokens = line[len("Code:"):].split()
    data = bytearray()
    fault = -1
    width = 0
    for tok in tokens[:256]:
        m = _CODE_TOKEN.match(tok)
        if not m:
            return None
        marked = tok[0] in "<("
        if marked:
            if fault >= 0 or tok[-1] not in ">)":
                return None
            fault = len(data)
        word = m.group(1)
        if width == 0:
            width = len(word) // 2
        if len(word) // 2 != width:
            return None
        data += int(word, 16).to_bytes(width, "little")
    if fault < 0 or not data:
        return None
    arch = {1: "x86_64", 2: "arm-thumb", 4: "arm64"}[width]
    return CodeBytes(bytes(data), fault, arch)

