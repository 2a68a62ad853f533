"""A drgn Program over any kpeek Kernel, with no debuginfo.

drgn (0.3.0) finds types, objects and symbols through finders a program
registers. Here they are kpeek's own: types converted from the kernel's BTF,
symbols from its kallsyms (module symbols included), global variables from a
symbol's address and the type BTF gives it (per-CPU variables) or the kernel
declares it with (the few globals drgn's helpers reach for by name). Memory is
read through the Kernel's memory (the BPF reader live, the dump file, ...), so
drgn's helpers (``for_each_task``, ``print_dmesg``, slab helpers) run on a
dump or the live kernel with no vmlinux and no /proc/kcore.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import drgn

from kpeek.errors import UsageError
from kpeek.kernel.btf import Btf, Kind, Type
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.objects import Object
from kpeek.kernel.program import Kernel
from kpeek.kernel.symbols import Kallsyms

TYPE_CHECKING = False  # typing itself costs 3 ms of every start-up
if TYPE_CHECKING:
    from typing import Any

# Globals drgn's helpers look up by name, with their C declarations: BTF
# describes only per-CPU variables, so these come from the kernel's headers.
KNOWN_VARIABLES: dict[str, str] = {
    "init_task": "struct task_struct",
    "init_pid_ns": "struct pid_namespace",
    "init_uts_ns": "struct uts_namespace",
    "init_mm": "struct mm_struct",
    "init_net": "struct net",
    "init_ipc_ns": "struct ipc_namespace",
    "init_cred": "struct cred",
    "init_files": "struct files_struct",
    "prb": "struct printk_ringbuffer *",
    "printk_rb_static": "struct printk_ringbuffer",
    "printk_rb_dynamic": "struct printk_ringbuffer",
    "slab_caches": "struct list_head",
    "modules": "struct list_head",
    "super_blocks": "struct list_head",
    "jiffies": "unsigned long",
    "jiffies_64": "u64",
    "max_pfn": "unsigned long",
    "min_low_pfn": "unsigned long",
    "max_low_pfn": "unsigned long",
    "page_offset_base": "unsigned long",
    "vmemmap_base": "unsigned long",
    "vmalloc_base": "unsigned long",
    "phys_base": "unsigned long",
    "tainted_mask": "unsigned long",
    "totalram_pages": "atomic_long_t",
    "nr_cpu_ids": "unsigned int",
    "nr_node_ids": "unsigned int",
    "nr_threads": "int",
    "panic_cpu": "atomic_t",
    "__cpu_online_mask": "struct cpumask",
    "__cpu_possible_mask": "struct cpumask",
    "__cpu_present_mask": "struct cpumask",
    "__cpu_active_mask": "struct cpumask",
    "node_states": "nodemask_t [%d]",
    "__per_cpu_offset": "unsigned long [%d]",
    "mem_section": "struct mem_section **",
    "node_data": "struct pglist_data *[%d]",
    "system_state": "enum system_states",
}
# Globals reachable from pid 1 where kallsyms has no data symbols (live here):
# init's parent is the idle task; its pid lives in the initial pid namespace.
DERIVED: dict[str, Callable[[Object], int]] = {
    "init_task": lambda init: init.member("real_parent").value_int(),
    "init_pid_ns": lambda init: init.member("thread_pid").deref()
    .member("numbers[0].ns").value_int(),
}
# What drgn's Linux support knows from VMCOREINFO, for the live kernel (x86-64).
CONSTANTS: dict[str, tuple[str, int]] = {
    "PAGE_SHIFT": ("int", 12),
    "PAGE_SIZE": ("unsigned long", 4096),
    "PAGE_MASK": ("unsigned long", (1 << 64) - 4096),
    "THREAD_SIZE": ("unsigned long", 16384),
}
KERNEL_HALF = 1 << 63  # the upper half: 5-level paging puts the direct map at 0xff1...
_QUALIFIERS = {Kind.CONST: drgn.Qualifiers.CONST, Kind.VOLATILE: drgn.Qualifiers.VOLATILE,
               Kind.RESTRICT: drgn.Qualifiers.RESTRICT}


class BtfTypes:
    """kpeek's BTF types as drgn Types (each converted once, members lazily)."""

    def __init__(self, prog: drgn.Program, btf: Btf) -> None:
        self.prog = prog
        self.btf = btf
        self._done: dict[int, drgn.Type] = {}

    def find(self, prog: drgn.Program, kinds: drgn.TypeKindSet, name: str,
             filename: str | None) -> drgn.Type | None:
        """The type finder: ``(prog, kinds, name, filename)``."""
        wanted: list[tuple[Kind, ...]] = []
        for kind in kinds:
            wanted.append({
                drgn.TypeKind.STRUCT: (Kind.STRUCT, Kind.FWD),
                drgn.TypeKind.UNION: (Kind.UNION, Kind.FWD),
                drgn.TypeKind.ENUM: (Kind.ENUM, Kind.ENUM64),
                drgn.TypeKind.TYPEDEF: (Kind.TYPEDEF,),
                drgn.TypeKind.INT: (Kind.INT,),
                drgn.TypeKind.BOOL: (Kind.INT,),
                drgn.TypeKind.FLOAT: (Kind.FLOAT,),
            }.get(kind, ()))
        for ks in wanted:
            for k in ks:
                t = self.btf.find(name, (k,))
                if t is None:
                    continue
                if k == Kind.FWD and t.kind_flag != (drgn.TypeKind.UNION in kinds):
                    continue
                return self.convert(t)
        return None

    def convert(self, t: Type) -> drgn.Type:
        got = self._done.get(t.id)
        if got is None:
            got = self._done[t.id] = self._convert(t)
        return got

    def _convert(self, t: Type) -> drgn.Type:
        p = self.prog
        k = t.kind
        if k == Kind.VOID:
            return p.void_type()
        if k == Kind.INT:
            encoding = t.int_info[0]
            if encoding & 4:  # BTF_INT_BOOL
                return p.bool_type(t.name, t.size)
            return p.int_type(t.name, t.size, bool(encoding & 1))
        if k == Kind.FLOAT:
            return p.float_type(t.name, t.size)
        if k == Kind.PTR:
            return p.pointer_type(self.convert(t.target), 8)
        if k in _QUALIFIERS:
            inner = self.convert(t.target)
            return inner.qualified(inner.qualifiers | _QUALIFIERS[k])
        if k in (Kind.TYPE_TAG, Kind.DECL_TAG):
            return self.convert(t.target)
        if k == Kind.TYPEDEF:
            return p.typedef_type(t.name, self.convert(t.target))
        if k == Kind.ARRAY:
            elem, _, n = t.array_info
            return p.array_type(self.convert(self.btf.type(elem)), n)
        if k in (Kind.ENUM, Kind.ENUM64):
            signed = any(e.value < 0 for e in t.enumerators)
            compatible = p.int_type(("" if signed else "unsigned ") + ("long" if t.size == 8
                                                                        else "int"),
                                    t.size, signed)
            return p.enum_type(t.name or None, compatible,
                               [drgn.TypeEnumerator(e.name, e.value) for e in t.enumerators])
        if k == Kind.FWD:
            make = p.union_type if t.kind_flag else p.struct_type
            return make(t.name, None, None)
        if k in (Kind.STRUCT, Kind.UNION):
            make = p.union_type if k == Kind.UNION else p.struct_type
            return make(t.name or None, t.size, [self._member(m) for m in t.members])
        if k == Kind.FUNC_PROTO:
            params = [drgn.TypeParameter(self._lazy(prm.type_id), prm.name or None)
                      for prm in t.params if prm.type_id != 0]
            variadic = bool(t.params) and t.params[-1].type_id == 0
            return p.function_type(self.convert(t.target), params, variadic)
        if k == Kind.FUNC:
            return self.convert(t.target)
        if k == Kind.VAR:
            return self.convert(t.target)
        return p.void_type()

    def _lazy(self, type_id: int) -> Callable[[], drgn.Type]:
        return lambda: self.convert(self.btf.type(type_id))

    def _member(self, m: Any) -> drgn.TypeMember:
        if m.bitfield_size:
            def field() -> drgn.Object:
                return drgn.Object(self.prog, self.convert(self.btf.type(m.type_id)),
                                   bit_field_size=m.bitfield_size)

            return drgn.TypeMember(field, m.name or None, m.bit_offset)
        return drgn.TypeMember(self._lazy(m.type_id), m.name or None, m.bit_offset)


def _kind_of(letter: str) -> drgn.SymbolKind:
    if letter in "tTwW":
        return drgn.SymbolKind.FUNC
    if letter in "dDbBrRvV":
        return drgn.SymbolKind.OBJECT
    return drgn.SymbolKind.UNKNOWN


class KallsymsFinder:
    """kpeek's kallsyms as drgn's symbol finder."""

    def __init__(self, symbols: Kallsyms) -> None:
        self.symbols = symbols

    def _drgn(self, sym: Any) -> drgn.Symbol:
        binding = drgn.SymbolBinding.GLOBAL if sym.kind.isupper() else drgn.SymbolBinding.LOCAL
        return drgn.Symbol(sym.name, sym.address, sym.size, binding, _kind_of(sym.kind))

    def find(self, prog: drgn.Program, name: str | None, address: int | None,
             one: bool) -> Sequence[drgn.Symbol]:
        if name is not None:
            sym = self.symbols.symbol(name)
            if sym is None or (address is not None and not _contains(sym, address)):
                return []
            return [self._drgn(sym)]
        if address is not None:
            sym = self.symbols.lookup(address)
            return [self._drgn(sym)] if sym is not None else []
        return [self._drgn(s) for s in self.symbols.all()]


def _contains(sym: Any, address: int) -> bool:
    return sym.address <= address < sym.address + max(sym.size, 1)


class VariableFinder:
    """Globals by name: their kallsyms address, their type from BTF (per-CPU
    variables) or :data:`KNOWN_VARIABLES`; functions typed from BTF."""

    def __init__(self, kernel: Kernel, symbols: Kallsyms, types: BtfTypes) -> None:
        self.kernel = kernel
        self.symbols = symbols
        self.types = types
        self.var_types: dict[str, Type] = {}
        self.enumerators: dict[str, tuple[Type, int]] = {}
        for t in kernel.types.types():
            if t.kind == Kind.VAR:
                self.var_types[t.name] = t
            elif t.kind in (Kind.ENUM, Kind.ENUM64):
                for e in t.enumerators:
                    self.enumerators.setdefault(e.name, (t, e.value))

    def find(self, prog: drgn.Program, name: str, flags: drgn.FindObjectFlags,
             filename: str | None) -> drgn.Object | None:
        if flags & drgn.FindObjectFlags.CONSTANT:
            if name in self.enumerators:
                enum, value = self.enumerators[name]
                return drgn.Object(prog, self.types.convert(enum), value=value)
            if name in CONSTANTS:
                decl, value = CONSTANTS[name]
                return drgn.Object(prog, decl, value=value)
            if name == "vmemmap" and self.symbols.symbol("vmemmap_base") is not None:
                base = prog.read_u64(self.symbols.address_of("vmemmap_base"))
                return drgn.Object(prog, "struct page *", value=base)
        sym = self.symbols.symbol(name)
        if sym is None:
            return self._derived(prog, name) if flags & drgn.FindObjectFlags.VARIABLE else None
        if sym.is_function and flags & drgn.FindObjectFlags.FUNCTION:
            func = self.kernel.types.find(name, (Kind.FUNC,))
            t = self.types.convert(func) if func is not None else prog.function_type(
                prog.void_type(), (), True)
            return drgn.Object(prog, t, address=sym.address)
        if not flags & drgn.FindObjectFlags.VARIABLE:
            return None
        var = self.var_types.get(name)
        if var is not None:
            return drgn.Object(prog, self.types.convert(var.target), address=sym.address)
        decl = KNOWN_VARIABLES.get(name)
        if decl is not None:
            if "%d" in decl:  # an array sized by the symbol's extent
                decl = decl % max(1, sym.size // _element_size(prog, decl))
            return drgn.Object(prog, prog.type(decl), address=sym.address)
        return drgn.Object(prog, prog.void_type(), address=sym.address)


    def _derived(self, prog: drgn.Program, name: str) -> drgn.Object | None:
        """A global kallsyms does not list (no data symbols), found through pid 1."""
        how = DERIVED.get(name)
        if how is None or self.kernel.tasks is None:
            return None
        try:
            address = how(self.kernel.task(1))
        except (UsageError, MemoryReadError):
            return None
        return drgn.Object(prog, KNOWN_VARIABLES[name], address=address)


def _element_size(prog: drgn.Program, decl: str) -> int:
    return drgn.sizeof(prog.type(decl.replace("[%d]", "").strip()))


def program(kernel: Kernel, symbols: Kallsyms | None = None,
            core: str | None = None) -> drgn.Program:
    """A drgn Program over ``kernel`` with kpeek's finders.

    With ``core`` (the dump's path) drgn reads the file itself and knows the
    kernel from its VMCOREINFO (page size, vmemmap, ...); otherwise memory is
    read through ``kernel.memory`` (the live BPF reader) and those constants
    come from :data:`CONSTANTS`. ``symbols`` defaults to the kernel's (pass
    them with module symbols merged).
    """
    prog = drgn.Program(drgn.host_platform)
    if core is not None:
        prog.set_core_dump(core)
    else:
        memory = kernel.memory

        def read(address: int, count: int, offset: int, physical: bool) -> bytes:
            try:
                return memory.read(address, count)
            except MemoryReadError:
                pass
            # a live kernel moves on: a pointer read from a cached page may be stale
            kernel.reread()
            try:
                return memory.read(address, count)
            except MemoryReadError as e:
                raise drgn.FaultError(str(e), address) from None

        prog.add_memory_segment(KERNEL_HALF, (1 << 64) - KERNEL_HALF, read)
    types = BtfTypes(prog, kernel.types)
    prog.register_type_finder("kpeek-btf", types.find, enable_index=0)
    syms = symbols if symbols is not None else kernel.symbols
    if syms is not None:
        prog.register_symbol_finder("kpeek-kallsyms", KallsymsFinder(syms).find, enable_index=0)
        # last: drgn's own Linux finder answers first for what it knows (PAGE_SHIFT, ...)
        prog.register_object_finder("kpeek-globals", VariableFinder(kernel, syms, types).find,
                                    enable_index=-1)
    return prog
