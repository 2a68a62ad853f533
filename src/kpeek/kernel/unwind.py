"""Kernel stacks from memory alone: ORC unwinding, with a stack scan as fallback.

A sleeping task's stack starts at ``task->thread.sp``, which points to the
``inactive_task_frame`` that __switch_to_asm pushed (its ``ret_addr`` is the
return into __schedule). A CPU's stack starts from its registers. Each step
follows the ORC entry of the current address, as the kernel's own
unwind_next_frame() does, until the entry says "end of stack" or a register
frame comes from user mode. Where ORC has no answer, the rest of the stack is
scanned for words that are return addresses into kernel text: those frames
are marked unreliable (printed with ``?``, as the kernel does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field

from kpeek.kernel import orc
from kpeek.kernel.memory import MemoryReadError
from kpeek.kernel.objects import Object
from kpeek.kernel.program import Kernel
from kpeek.records import record

THREAD_SIZE = 16 << 10  # x86-64 kernel stacks (KASAN kernels double it)
MAX_FRAMES = 128
_MASK = (1 << 64) - 1


@record(frozen=True, slots=True)
class Frame:
    """One return address on a stack; ``reliable`` False for scanned guesses."""

    ip: int
    sp: int
    reliable: bool = True


@record
class Stack:
    frames: list[Frame] = field(default_factory=list)
    complete: bool = False  # reached the end of the stack (or user mode)
    note: str = ""  # why the unwind stopped early, when it did


@record
class _State:
    ip: int
    sp: int
    bp: int
    regs: dict[str, int] | None = None  # the registers of the last register frame
    signal: bool = False  # ip is exact (interrupted), not a return address


class Unwinder:
    """Unwinds stacks of one kernel. ``extra_tables`` are the modules' ORC tables;
    ``is_text(address)`` says whether an address is in kernel or module text."""

    def __init__(self, kernel: Kernel, extra_tables: list[orc.OrcTable] | None = None,
                 is_text: Callable[[int], bool] | None = None) -> None:
        self.kernel = kernel
        tables: list[orc.OrcTable] = []
        base = orc.vmlinux_table(kernel.memory, kernel.types, kernel.symbol_address) \
            if kernel.symbols is not None else None
        if base is not None:
            tables.append(base)
        tables += extra_tables or []
        self.tables = orc.OrcTables(tables)
        self.is_text = is_text or self._vmlinux_text
        regs = kernel.type("struct pt_regs").resolve()
        self._regs_size = regs.size
        self._reg_at = {name: regs.offsetof(name) for name in (
            "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
            "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss")}

    # -- where to start ----------------------------------------------------
    def task_stack(self, task: Object) -> Stack:
        """The stack of a task that is not running: from its saved switch frame."""
        k = self.kernel
        base = task.member("stack").value_int()
        sp = task.member("thread.sp").value_int()
        bounds = (base, base + THREAD_SIZE)
        if not bounds[0] <= sp < bounds[1]:
            return self.scan(bounds[0], bounds, note="the saved stack pointer is off its stack")
        self._task_bounds = bounds
        frame = k.object("struct inactive_task_frame", sp)
        try:
            start = _State(ip=frame.member("ret_addr").value_int(),
                           sp=sp + frame.size, bp=frame.member("bp").value_int())
        except MemoryReadError as e:
            return Stack(note=f"stack not readable: {e}")
        return self.unwind(start, bounds)

    def registers_stack(self, regs: dict[str, int], task: Object | None = None) -> Stack:
        """The stack of a CPU stopped with these registers (ip, sp, bp, ...),
        running ``task``: from an interrupt or exception stack onto the task's."""
        state = _State(ip=regs["ip"], sp=regs["sp"], bp=regs.get("bp", 0), regs=dict(regs),
                       signal=True)
        if task is not None:
            base = task.member("stack").value_int()
            self._task_bounds = (base, base + THREAD_SIZE)
        return self.unwind(state, self._bounds_of(state.sp))

    _task_bounds: tuple[int, int] | None = None

    def _bounds_of(self, sp: int) -> tuple[int, int]:
        """The stack ``sp`` is on: the task's, or an aligned IRQ/exception stack."""
        tb = self._task_bounds
        if tb is not None and tb[0] <= sp < tb[1]:
            return tb
        low = sp & ~(THREAD_SIZE - 1)
        return (low, low + THREAD_SIZE)

    # -- the walk ----------------------------------------------------------
    def unwind(self, state: _State, bounds: tuple[int, int]) -> Stack:
        """Follow ORC from ``state`` until the end of the stack or an error."""
        stack = Stack()
        if not self.tables:
            return self.scan(state.sp, bounds, note="no ORC tables (symbols missing)", stack=stack)
        for _ in range(MAX_FRAMES):
            if state.regs is not None and not bounds[0] <= state.sp < bounds[1]:
                bounds = self._bounds_of(state.sp)  # an interrupt frame: onto another stack
            if not self.is_text(state.ip):
                stack.note = f"0x{state.ip:x} is not kernel text"
                break
            stack.frames.append(Frame(state.ip, state.sp))
            try:
                step = self._step(state, bounds)
            except MemoryReadError as e:
                stack.note = f"stack not readable: {e}"
                break
            if step is None:
                stack.complete = True
                return stack
            if isinstance(step, str):
                stack.note = step
                break
            if step.sp <= state.sp and not step.regs and not state.regs:
                stack.note = "the stack pointer went backwards"
                break
            state = step
        else:
            stack.note = f"more than {MAX_FRAMES} frames"
        return self.scan(state.sp, bounds, stack=stack)

    def _step(self, s: _State, bounds: tuple[int, int]) -> _State | str | None:
        """The caller's state; None at the end of the stack; a string on error."""
        entry = self.tables.find(s.ip if s.signal else s.ip - 1)
        if entry is None:
            entry = orc.FRAME_POINTER_ENTRY
        if entry.kind == orc.END:
            return None
        if entry.kind == orc.UNDEFINED:
            return f"no unwind information for 0x{s.ip:x}"
        read = self._word
        reg = entry.sp_reg
        if reg == orc.REG_SP:
            sp = s.sp + entry.sp_offset
        elif reg == orc.REG_BP:
            sp = s.bp + entry.sp_offset
        elif reg == orc.REG_SP_INDIRECT:
            sp = read(s.sp) + entry.sp_offset
        elif reg == orc.REG_BP_INDIRECT:
            sp = read(s.bp + entry.sp_offset)
        elif reg in orc.REG_NAMES and s.regs is not None and orc.REG_NAMES[reg] in s.regs:
            sp = s.regs[orc.REG_NAMES[reg]]
        else:
            return f"cannot find the caller's stack at 0x{s.ip:x} (sp register {reg})"
        sp &= _MASK
        if entry.kind == orc.CALL:
            nxt = _State(ip=read(sp - 8), sp=sp, bp=s.bp)
        elif entry.kind in (orc.REGS, orc.REGS_PARTIAL):
            # REGS: sp is a full pt_regs; REGS_PARTIAL: sp is its iret part (at ip)
            base = sp if entry.kind == orc.REGS else sp - self._reg_at["ip"]
            regs = self._read_regs(base, full=entry.kind == orc.REGS)
            if regs["cs"] & 3:
                return None  # the frame the task entered the kernel with, from user mode
            nxt = _State(ip=regs["ip"], sp=regs["sp"], bp=regs.get("bp", s.bp), regs=regs,
                         signal=True)
        else:
            return f"unknown ORC entry at 0x{s.ip:x}"
        if entry.bp_reg == orc.REG_PREV_SP:
            nxt.bp = read(sp + entry.bp_offset)
        elif entry.bp_reg == orc.REG_BP:
            nxt.bp = read(s.bp + entry.bp_offset)
        elif entry.bp_reg == orc.REG_UNDEFINED and nxt.regs is not None and "bp" in nxt.regs:
            nxt.bp = nxt.regs["bp"]
        if entry.kind == orc.CALL and entry.signal:
            nxt.signal = True
        if not nxt.regs and not bounds[0] <= nxt.sp <= bounds[1]:
            return "the stack pointer left the task's stack"
        return nxt

    def _word(self, address: int) -> int:
        return int.from_bytes(self.kernel.memory.read(address, 8), "little")

    def _read_regs(self, base: int, *, full: bool) -> dict[str, int]:
        first = 0 if full else self._reg_at["ip"]
        raw = self.kernel.memory.read(base + first, self._regs_size - first)
        return {name: int.from_bytes(raw[at - first : at - first + 8], "little")
                for name, at in self._reg_at.items() if at >= first}

    # -- fallback ----------------------------------------------------------
    def scan(self, start: int, bounds: tuple[int, int], *, note: str = "",
             stack: Stack | None = None) -> Stack:
        """Add each word from ``start`` to the stack's top that looks like a return
        address into kernel text, as an unreliable frame."""
        stack = stack or Stack()
        if note and not stack.note:
            stack.note = note
        start = max(start, bounds[0]) & ~7
        try:
            data = self.kernel.memory.read(start, bounds[1] - start)
        except MemoryReadError:
            return stack
        for off in range(0, len(data), 8):
            word = int.from_bytes(data[off : off + 8], "little")
            if self.is_text(word) and self._after_call(word):
                stack.frames.append(Frame(word, start + off, reliable=False))
        return stack

    def _after_call(self, address: int) -> bool:
        """Whether the instruction before ``address`` is a call (a return address)."""
        try:
            code = self.kernel.memory.read(address - 7, 7)
        except MemoryReadError:
            return False
        if code[2] == 0xE8:  # call rel32
            return True
        for length in (2, 3, 6, 7):  # call *r/m: ff /2
            op, modrm = code[7 - length], code[8 - length]
            if op == 0xFF and (modrm >> 3) & 7 == 2:
                return True
        return False

    def _vmlinux_text(self, address: int) -> bool:
        sym = self.kernel.symbols.lookup(address) if self.kernel.symbols else None
        return sym is not None and sym.is_function


def visible(frames: list[Frame], kernel: Kernel) -> list[Frame]:
    """Frames outside the scheduler (.sched.text), as /proc/PID/stack shows them."""
    lo, hi = kernel.symbol_address("__sched_text_start"), kernel.symbol_address("__sched_text_end")
    if lo is None or hi is None:
        return frames
    return [f for f in frames if not lo <= f.ip < hi]


def kernel_unwinder(kernel: Kernel) -> Unwinder:
    """An unwinder for ``kernel`` that knows its modules' text and ORC tables."""
    from kpeek.kernel.modules import list_modules

    try:
        mods = list_modules(kernel)
    except MemoryReadError:
        mods = []
    tables: list[orc.OrcTable] = []
    if mods and kernel.symbols is not None:
        fmt = orc.OrcFormat(kernel.types)
        for m in mods:
            if m.orc is not None:
                try:
                    tables.append(orc.OrcTable(kernel.memory, fmt, *m.orc, name=m.name))
                except MemoryReadError:
                    continue
    ranges = [r for m in mods for r in m.text]
    for lo, hi in (("_stext", "_etext"), ("_sinittext", "_einittext")):
        a, b = kernel.symbol_address(lo), kernel.symbol_address(hi)
        if a is not None and b is not None:
            ranges.append((a, b))
    unwinder = Unwinder(kernel, tables)
    if ranges:
        unwinder.is_text = lambda address: any(lo <= address < hi for lo, hi in ranges)
    return unwinder


def cpu_current_task(kernel: Kernel, cpu: int) -> int | None:
    """The task_struct address running on ``cpu`` (per-CPU ``current_task``, or
    ``pcpu_hot.current_task`` since 6.2), or None where symbols lack it."""
    offsets = kernel.symbol_address("__per_cpu_offset")
    if offsets is None:
        return None
    base = int.from_bytes(kernel.memory.read(offsets + 8 * cpu, 8), "little")
    var = kernel.symbol_address("current_task")
    if var is None:
        hot = kernel.symbol_address("pcpu_hot")
        if hot is None:
            return None
        var = hot + kernel.type("struct pcpu_hot").resolve().offsetof("current_task")
    return int.from_bytes(kernel.memory.read((base + var) & _MASK, 8), "little") or None


def task_cpu(task: Object) -> int:
    """The CPU a task last ran on (``task->cpu``; ``thread_info.cpu`` on old kernels)."""
    from kpeek.kernel.btf import UnknownMember

    try:
        return task.member("cpu").value_int()
    except UnknownMember:
        return task.member("thread_info.cpu").value_int()
