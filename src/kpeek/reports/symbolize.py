"""Name the bare addresses in a live kernel log with kallsyms.

Kernels built without CONFIG_KALLSYMS_ALL, or logs captured from early
boot, print stack entries as ``[<ffffffff81234567>]`` only. With the
running kernel's kallsyms we can add ``name+0xoff/0xsize`` to such lines,
which is what the report table needs to find a guilty frame. Only valid
for the log of the kernel that is running now (KASLR moves addresses on
every boot), so this is applied to /dev/kmsg, never to files.
"""

from __future__ import annotations

from collections.abc import Callable

from kpeek.lazyre import lazy

_BARE_FRAME = lazy(r"^(.*?\] ?\s*(?:\?\s+)?)\[<([0-9a-f]{8,16})>\]\s*$")
_BARE_IP = lazy(r"^(.*?(?:RIP|IP|pc) ?: ?(?:[0-9]{4}:)?)(?:0x)?([0-9a-f]{16})\s*$")


def symbolize_log(text: str, symbolize: Callable[[int], str | None]) -> str:
    """``text`` with ``name+0xoff/0xsize`` added after bare kernel addresses.

    ``symbolize(address)`` returns the symbol form or None; lines it cannot
    name are left as they are.
    """
    out: list[str] = []
    for line in text.split("\n"):
        m = _BARE_FRAME.match(line)
        if m:
            name = symbolize(int(m.group(2), 16))
            if name:
                line = f"{m.group(1)}[<{m.group(2)}>] {name}"
        else:
            m = _BARE_IP.match(line)
            if m:
                name = symbolize(int(m.group(2), 16))
                if name:
                    line = f"{m.group(1)}{name}"
        out.append(line)
    return "\n".join(out)
