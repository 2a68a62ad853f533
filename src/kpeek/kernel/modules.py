"""Loaded kernel modules, read from memory: the ``modules`` list.

Each ``struct module`` gives its name, state, memory (6.4+: ``mem[]`` by
``enum mod_mem_type``; before: ``core_layout``/``init_layout``), reference
count (``refcnt`` - MODULE_REF_BASE), taint bits, who uses it
(``source_list``), what it uses (``target_list``), its own symbol table
(``kallsyms``) and its ORC unwind table (``arch``). Every layout question is
answered by BTF; the two fallbacks below are for types BTF may omit.
"""

from __future__ import annotations

import contextlib
from dataclasses import field

from kpeek.kernel.btf import UnknownMember, UnknownType
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.objects import Object, ObjectError
from kpeek.kernel.program import Kernel
from kpeek.kernel.symbols import Kallsyms
from kpeek.records import record

MODULE_REF_BASE = 1
# TAINT_* bit -> letter (include/linux/panic.h, taint_flags[] in kernel/panic.c)
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"
# struct module_use {source_list, target_list, source, target}: stable since 2.6.35;
# used only when BTF lacks the type (it is private to kernel/module/).
_MODULE_USE = {"source_list": 0, "target_list": 16, "source": 32, "target": 40}
# Elf64_Sym (the ELF ABI) when BTF lacks it
_ELF64_SYM = {"st_name": (0, 4), "st_info": (4, 1), "st_value": (8, 8), "st_size": (16, 8)}
MAX_MODULE_SYMBOLS = 1 << 20


@record
class Module:
    """One loaded module. Ranges are (start, end) address pairs, end exclusive."""

    name: str
    address: int
    state: str
    text: list[tuple[int, int]] = field(default_factory=list)
    data: list[tuple[int, int]] = field(default_factory=list)
    size: int = 0
    refcount: int | None = None  # None: the kernel cannot unload modules
    taints: str = ""
    used_by: list[str] = field(default_factory=list)
    uses: list[str] = field(default_factory=list)
    orc: tuple[int, int, int] | None = None  # (ip table, entries, count)

    def holds(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.text + self.data)

    def in_text(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.text)


def taint_letters(mask: int) -> str:
    return "".join(ch for bit, ch in enumerate(TAINT_LETTERS) if mask >> bit & 1)


def module_objects(kernel: Kernel) -> list[Object]:
    """Every ``struct module`` on the ``modules`` list (empty without the symbol)."""
    head = kernel.symbol_address("modules")
    if head is None:
        return []
    walk = kernel.list_entries(head, "struct module", "list")
    t = kernel.type("struct module")
    return [kernel.object(t, a) for a in walk.entries]


def read_module(kernel: Kernel, mod: Object) -> Module:
    m = Module(name=mod.member("name").value(), address=mod.address,
               state=str(mod.member("state").value()).removeprefix("MODULE_STATE_").lower())
    m.text, m.data, m.size = _layout(kernel, mod)
    with contextlib.suppress(UnknownMember):
        m.refcount = mod.member("refcnt.counter").value_int() - MODULE_REF_BASE
    m.taints = taint_letters(mod.member("taints").value_int())
    m.used_by = _uses(kernel, mod, "source_list", "source")
    m.uses = _uses(kernel, mod, "target_list", "target")
    try:
        arch = mod.member("arch")
        count = arch.member("num_orcs").value_int()
        if count:
            m.orc = (arch.member("orc_unwind_ip").value_int(),
                     arch.member("orc_unwind").value_int(), count)
    except UnknownMember:
        pass
    return m


def list_modules(kernel: Kernel) -> list[Module]:
    """All loaded modules, in list order (the most recently loaded first)."""
    return [read_module(kernel, mod) for mod in module_objects(kernel)]


def _layout(kernel: Kernel, mod: Object) -> tuple[list, list, int]:
    """(text ranges, data ranges, total size) of a module's memory."""
    text: list[tuple[int, int]] = []
    data: list[tuple[int, int]] = []
    try:
        mem = mod.member("mem")
    except UnknownMember:
        mem = None
    if mem is not None:  # 6.4+: one module_memory per enum mod_mem_type
        kinds = kernel.type("enum mod_mem_type").resolve().enumerators
        total = 0
        for kind in kinds:
            if kind.value < 0 or kind.name == "MOD_MEM_NUM_TYPES":
                continue
            region = mem[kind.value]
            base, size = region.member("base").value_int(), region.member("size").value_int()
            if not size:
                continue
            (text if kind.name.endswith("_TEXT") else data).append((base, base + size))
            if not kind.name.startswith("MOD_INIT"):
                total += size
        return text, data, total
    total = 0
    for layout in ("core_layout", "init_layout"):  # before 6.4
        lay = mod.member(layout)
        base, size = lay.member("base").value_int(), lay.member("size").value_int()
        if not size:
            continue
        text_size = lay.member("text_size").value_int()
        text.append((base, base + text_size))
        data.append((base + text_size, base + size))
        if layout == "core_layout":
            total = size
    return text, data, total


def _uses(kernel: Kernel, mod: Object, head: str, other: str) -> list[str]:
    """Names of the modules on ``mod->head`` (a list of struct module_use)."""
    try:
        list_head = mod.member(head)
    except UnknownMember:
        return []
    try:
        use = kernel.type("struct module_use").resolve()
        node_at, other_at = use.offsetof(head), use.offsetof(other)
    except (UnknownType, UnknownMember):
        node_at, other_at = _MODULE_USE[head], _MODULE_USE[other]
    names = []
    module_type = kernel.type("struct module")
    walk = kernel.list_entries(list_head)
    for node in walk.entries:
        try:
            target = int.from_bytes(kernel.memory.read(node - node_at + other_at, 8), "little")
            names.append(kernel.object(module_type, target).member("name").value())
        except (MemoryReadError, ObjectError):
            names.append("?")
    return names


def module_symbols(kernel: Kernel, mod: Object) -> list[tuple[int, str, str]]:
    """(address, nm-style type letter, name) of each symbol in the module's kallsyms."""
    try:
        ks = mod.member("kallsyms").deref()
    except (UnknownMember, ObjectError):
        return []
    count = ks.member("num_symtab").value_int()
    symtab, strtab = ks.member("symtab").value_int(), ks.member("strtab").value_int()
    if not 0 < count <= MAX_MODULE_SYMBOLS or not symtab or not strtab:
        return []
    try:
        typetab = ks.member("typetab").value_int()
    except UnknownMember:
        typetab = 0
    try:
        sym = kernel.type("Elf64_Sym").resolve()
        layout = {}
        for n in _ELF64_SYM:
            bit, member = sym.member(n)
            layout[n] = (bit // 8, kernel.types.type(member.type_id).size)
        entry = sym.size
    except (UnknownType, UnknownMember):
        layout, entry = _ELF64_SYM, 24
    try:
        table = kernel.memory.read(symtab, count * entry)
        types = kernel.memory.read(typetab, count) if typetab else b""
    except MemoryReadError:
        return []
    # the string table's size is not recorded: read until the last name ends
    names_at = [int.from_bytes(table[i * entry + layout["st_name"][0]:][:4], "little")
                for i in range(count)]
    strings = _read_strings(kernel, strtab, max(names_at, default=0))
    out = []
    for i in range(count):
        at, size = layout["st_value"]
        value = int.from_bytes(table[i * entry + at : i * entry + at + size], "little")
        name = _string_at(strings, names_at[i])
        if not name or not value:
            continue
        kind = chr(types[i]) if types else "t"
        out.append((value, kind, name))
    return out


def _read_strings(kernel: Kernel, address: int, last: int) -> bytes:
    size = last + 256
    while size > 0:
        try:
            return kernel.memory.read(address, size)
        except MemoryReadError:
            size //= 2  # the last name ends before the page that failed
    return b""


def _string_at(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset : end if end >= 0 else len(strings)].decode("utf-8", "replace")


def with_module_symbols(kernel: Kernel) -> Kallsyms | None:
    """The kernel's symbols plus every module's own (None when no symbols); as
    they are when they already have module symbols (/proc/kallsyms lists them)."""
    base = kernel.symbols
    if base is None or base.has_module_symbols:
        return base
    extra: list[tuple[int, str, str, str]] = []
    ends: list[int] = []
    for mod in module_objects(kernel):
        name = mod.member("name").value()
        extra += [(a, k, n, name) for a, k, n in module_symbols(kernel, mod)]
        ends += [hi for _, hi in _layout(kernel, mod)[0]]
    return base.extended(extra, ends) if extra else base


def last_unloaded(kernel: Kernel) -> str | None:
    """The name of the last module removed (``last_unloaded_module``), if known."""
    address = kernel.symbol_address("last_unloaded_module")
    if address is None:
        return None
    try:
        raw = kernel.memory.read(address, 56)  # MODULE_NAME_LEN; a name first in every version
    except MemoryReadError:
        return None
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@record(frozen=True)
class Holder:
    """An open file whose ``f_op->owner`` is a module: who holds it, on which fd."""

    pid: int
    comm: str
    fd: int
    file: int


def files_held(kernel: Kernel, owners: set[int]) -> dict[int, list[Holder]]:
    """module address -> the open files (by task and fd) whose file_operations
    it owns, from a walk of every task's fd table (each table once)."""
    from kpeek.kernel.fdtable import FileReader
    from kpeek.kernel.tasks import all_task_addresses

    reader = FileReader(kernel)
    fop_at = kernel.type("struct file").resolve().offsetof("f_op")
    owner_at = kernel.type("struct file_operations").resolve().offsetof("owner")
    out: dict[int, list[Holder]] = {}
    seen_tables: set[int] = set()
    task_type = kernel.type("struct task_struct")
    for address in all_task_addresses(kernel):
        task = kernel.object(task_type, address)
        try:
            files = task.member("files").value_int()
            if not files or files in seen_tables:
                continue
            seen_tables.add(files)
            table = reader.table(files)
        except (MemoryReadError, ValueError):
            continue
        for fd, file, _ in table:
            try:
                fop = _word(kernel, file + fop_at)
                owner = _word(kernel, fop + owner_at) if fop else 0
            except MemoryReadError:
                continue
            if owner in owners:
                holder = Holder(task.member("tgid").value_int(), task.member("comm").value(),
                                fd, file)
                out.setdefault(owner, []).append(holder)
    return out


def _word(kernel: Kernel, address: int) -> int:
    return int.from_bytes(kernel.memory.read(address, 8), "little")
