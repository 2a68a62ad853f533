"""The /proc/cplayground line format of the teaching tool's old kernel module.

Per process: ``<ns id>\\t<pid>\\t<pid in ns>\\t<ppid in ns>\\t<pgid in ns>\\t<command>``,
then one ``<fd>\\t<cloexec 0/1>\\t<open file id>\\t<offset>\\t0<flags octal>\\t<path>``
line per descriptor, then a blank line. Names are escaped so a newline in a
command or path cannot forge a line.
"""

from __future__ import annotations

from collections.abc import Iterable

from kpeek.ids import keyed_id
from kpeek.model import Snapshot, Task
from kpeek.textsafe import for_terminal


def render(snap: Snapshot, processes: Iterable[Task]) -> str:
    lines: list[str] = []
    for t in processes:
        ns = keyed_id("pidns", t.pidns, width=8)
        lines.append(
            f"{ns}\t{t.pid}\t{t.ns_pid}\t{t.ns_ppid}\t{t.ns_pgid}\t{for_terminal(t.comm)}"
        )
        for d in snap.fds_of(t.tgid):
            f = snap.open_files[d.open_file]
            lines.append(
                f"{d.fd}\t{int(d.cloexec)}\t{d.open_file}\t{f.pos}\t0{f.flags:o}\t"
                f"{for_terminal(f.path)}"
            )
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")
