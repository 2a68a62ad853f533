"""`kpeek serve` under idle and slow-drip (slowloris) clients, against Python's
own threading http.server in the same run: N idle connections that send
nothing and M clients that send a request one byte a second and never finish
it. Measured: threads of the server process at 1 s and after 15 s, how long a
request takes while they are connected, when the server closed the slow ones.

    .venv/bin/python bench/bench_serve.py --idle 200 --drip 20
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import slow_clients  # noqa: E402


def start_kpeek() -> tuple[subprocess.Popen, int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpeek", "serve", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)", proc.stdout.readline())
    if not match:
        raise SystemExit("kpeek serve did not print its URL")
    return proc, int(match[1]), f"/?token={match[2]}"


def start_peer(root: str) -> tuple[subprocess.Popen, int, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            root,
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return proc, port, "/"


def measure(
    name: str, proc: subprocess.Popen, port: int, path: str, idle: int, drip: int, hold_s: float
) -> str:
    socks = slow_clients.connect(port, idle)
    dripping = slow_clients.Drip(port, drip, every=1.0)
    try:
        time.sleep(1)
        threads_1s = slow_clients.threads_of(proc.pid)
        time.sleep(2)
        try:
            status, _, took = slow_clients.timed_get(port, path, timeout=20)
            answered = f"status {status} in {took:.2f} s"
        except OSError as e:
            answered = f"not answered in 20 s ({type(e).__name__})"
        time.sleep(max(0.0, hold_s - (time.monotonic() - dripping.start)))
        threads_late = slow_clients.threads_of(proc.pid)
        closed = sorted(dripping.closed_after.values())
        idle_closed = sum(1 for s in socks if _closed(s))
    finally:
        dripping.close()
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(timeout=20)
    slow = f"{len(closed)} of {drip} closed by the server"
    if closed:
        slow += f" (after {closed[0]:.1f}-{closed[-1]:.1f} s)"
    return (
        f"{name}: threads {threads_1s} at 1 s, {threads_late} at {hold_s:g} s; request while "
        f"connected: {answered}; slow-drip clients: {slow}; idle: {idle_closed} of {idle} "
        "closed"
    )


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--drip", type=int, default=20)
    ap.add_argument("--hold", type=float, default=15, help="seconds before the late count")
    ap.add_argument("--out", default=str(REPO / "bench/results/bench_serve.txt"))
    args = ap.parse_args()
    lines = [
        f"bench/bench_serve.py --idle {args.idle} --drip {args.drip} --hold {args.hold:g} "
        f"(load {os.getloadavg()[0]:.1f})"
    ]
    lines.append(measure("kpeek serve", *start_kpeek(), args.idle, args.drip, args.hold))
    with tempfile.TemporaryDirectory() as root:
        Path(root, "index.html").write_text("peer\n")
        lines.append(
            measure(
                f"python{sys.version_info[0]}.{sys.version_info[1]} -m http.server",
                *start_peer(root),
                args.idle,
                args.drip,
                args.hold,
            )
        )
    report = "\n".join(lines) + "\n"
    print(report, end="")
    Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
