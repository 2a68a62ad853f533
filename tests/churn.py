"""Bounded fork/exit churn for snapshot soak tests: a parent that keeps forking
children which open a pipe and a file, sleep a moment and exit. Stopped (and
every child reaped) by stop()."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

_CHURN = r"""
import os, sys, time, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
path = sys.argv[1]
live = set()
while True:
    if len(live) < 8:                     # bounded: at most 8 children at a time
        pid = os.fork()
        if pid == 0:
            r, w = os.pipe()
            f = os.open(path, os.O_RDONLY)
            time.sleep(0.002)
            os._exit(0)
        live.add(pid)
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            live.discard(pid)
    except ChildProcessError:
        live.clear()
    time.sleep(0.0005)
"""


class Churn:
    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHURN, path])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # the children it had not reaped are its, and exit on their own
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def dangling(snap) -> list[str]:
    """Every reference in a snapshot that does not resolve."""
    tgids = {t.tgid for t in snap.processes()}
    bad = [f"fd {d.tgid}/{d.fd}: no such process" for d in snap.fds if d.tgid not in tgids]
    bad += [
        f"fd {d.tgid}/{d.fd}: no open file {d.open_file}"
        for d in snap.fds
        if d.open_file not in snap.open_files
    ]
    held = {d.open_file for d in snap.fds}
    bad += [f"open file {k}: no holder" for k in snap.open_files if k not in held]
    return bad


def dangling_in_document(doc: dict) -> list[str]:
    """Every reference in a files --json document that does not resolve: a
    holder [pid, fd] whose pid is not among its processes, an fd whose open
    file, or an open file whose inode, is not listed."""
    pids = {p["pid"] for p in doc["processes"]}
    bad = [
        f"holder {h}: no such process"
        for f in doc["open_files"]
        for h in f["holders"]
        if h[0] not in pids
    ]
    files = {f["id"] for f in doc["open_files"]}
    bad += [
        f"fd {p['pid']}/{d['fd']}: no open file {d['open_file']}"
        for p in doc["processes"]
        for d in p["fds"]
        if d["open_file"] not in files
    ]
    inodes = {i["id"] for i in doc["inodes"]}
    bad += [
        f"open file {f['id']}: no inode {f['inode']}"
        for f in doc["open_files"]
        if f["inode"] not in inodes
    ]
    return bad


# What a kernel report's first line says, and a BPF program named in its trace.
KERNEL_REPORT = re.compile(r"Oops|BUG:|WARNING:|general protection fault|Kernel panic")
BPF_PROGRAM = re.compile(r"bpf_prog_[0-9a-f]+_(\w+)")


def kmsg_records() -> list[tuple[int, str]]:
    """Every record in the kernel's log buffer now, as (sequence, text)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    found = []
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # a record overwritten while reading: go on
                continue
            head, _, text = raw.decode(errors="replace").partition(";")
            found.append((int(head.split(",")[1]), text.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return found
