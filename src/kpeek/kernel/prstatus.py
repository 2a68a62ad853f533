"""CPU registers saved in a dump's PRSTATUS notes (x86-64).

Each CPU's note (name "CORE", type NT_PRSTATUS) is a ``struct elf_prstatus``
whose ``pr_reg`` is the ``user_regs_struct`` layout of the ELF core ABI. Dumps
written by QEMU and by kdump both carry one per CPU, in CPU order.
"""

from __future__ import annotations

PR_REG_OFFSET = 112  # offsetof(struct elf_prstatus, pr_reg) on x86-64
PR_PID_OFFSET = 32
USER_REGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
             "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")


def prstatus_registers(desc: bytes) -> dict[str, int] | None:
    """The registers in one ``struct elf_prstatus`` (None when it is too short)."""
    if len(desc) < PR_REG_OFFSET + 8 * len(USER_REGS):
        return None
    regs = {r: int.from_bytes(desc[PR_REG_OFFSET + 8 * i : PR_REG_OFFSET + 8 * i + 8], "little")
            for i, r in enumerate(USER_REGS)}
    regs["pid"] = int.from_bytes(desc[PR_PID_OFFSET : PR_PID_OFFSET + 4], "little")
    return regs
