"""CPU registers saved in a dump's PRSTATUS notes (x86-64).

Each CPU's note (name "CORE", type NT_PRSTATUS) is a ``struct elf_prstatus``
whose ``pr_reg`` is the ``user_regs_struct`` layout of the ELF core ABI. Dumps
written by QEMU and by kdump both carry one per CPU, in CPU order.
"""

from __future__ import annotations

NT_PRSTATUS = 1
PR_REG_OFFSET = 112  # offsetof(struct elf_prstatus, pr_reg) on x86-64
PR_PID_OFFSET = 32
USER_REGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
             "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_notes(blob: bytes) -> list[tuple[str, int, bytes]]:
    """(name, type, descriptor) of each ELF note in ``blob`` (stops at a bad one)."""
    out = []
    at = 0
    while at + 12 <= len(blob):
        namesz, descsz, kind = (int.from_bytes(blob[at + i : at + i + 4], "little")
                                for i in (0, 4, 8))
        name_at = at + 12
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if namesz > 4096 or end > len(blob):
            break
        name = blob[name_at : name_at + namesz].rstrip(b"\0").decode("ascii", "replace")
        out.append((name, kind, blob[desc_at : desc_at + descsz]))
        at = end
    return out


def cpu_registers(blob: bytes) -> list[dict[str, int]]:
    """Each CPU's registers, in note order (CPU 0 first), from a notes blob."""
    cpus = []
    for name, kind, desc in parse_notes(blob):
        if name != "CORE" or kind != NT_PRSTATUS or len(desc) < PR_REG_OFFSET + 8 * 27:
            continue
        regs = {r: int.from_bytes(desc[PR_REG_OFFSET + 8 * i : PR_REG_OFFSET + 8 * i + 8],
                                  "little") for i, r in enumerate(USER_REGS)}
        regs["pid"] = int.from_bytes(desc[PR_PID_OFFSET : PR_PID_OFFSET + 4], "little")
        cpus.append(regs)
    return cpus
