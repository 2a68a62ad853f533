"""kpeek log: the kernel log (the printk ring buffer), read from memory, like dmesg.

  kpeek -c vmcore log             the log of the kernel in a dump
  kpeek -c vmcore log --json      one record per entry: seq, time, level, caller, text

On the live kernel the buffer is read from memory where kallsyms has the data
symbol ``prb`` (KALLSYMS_ALL), else through /dev/kmsg (with a note). A
record of many lines has its time on every line, as the kernel's console
and syslog(2) (busybox dmesg) print it; util-linux dmesg indents them.
"""

from __future__ import annotations

import argparse
import sys

from kpeek import jsonout
from kpeek.commands.common import add_json
from kpeek.kernel.kmsg import kernel_log
from kpeek.kernel.printk import format_record
from kpeek.targets import open_kernel
from kpeek.textsafe import for_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("log", help="the kernel log from memory, like dmesg",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", type=int, metavar="N", choices=range(8),
                   help="only records of level N or more urgent (0 emerg .. 7 debug)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kernel = open_kernel(args, "kpeek log")
    records, note = kernel_log(kernel)
    if note:
        sys.stderr.write(f"note: {for_terminal(note)}\n")
    if args.level is not None:
        records = [r for r in records if r.level <= args.level]
    if args.json:
        jsonout.emit("log", {"origin": kernel.origin, "notes": [note] if note else [],
                             "records": [{
            "seq": r.seq, "time": r.ts_nsec / 1e9, "ts_nsec": r.ts_nsec, "level": r.level,
            "facility": r.facility, "caller": r.caller, "text": r.text,
            "subsystem": r.subsystem or None, "device": r.device or None,
        } for r in records]})
        return 0
    out = sys.stdout
    for record in records:
        for line in format_record(record).split("\n"):
            # escaped like every kernel string, but tabs kept: dmesg's columns use them
            out.write("\t".join(for_terminal(part) for part in line.split("\t")) + "\n")
    return 0
