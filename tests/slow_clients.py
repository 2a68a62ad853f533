"""Clients that hold connections to `kpeek serve` without finishing a request:
idle ones that send nothing and slow-drip ones (slowloris) that send a
request one byte every few seconds and never end its headers. One thread
drips for all of them. Used by tests/test_serve.py and bench/bench_serve.py."""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from pathlib import Path


def connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise LookupError(pid)


def timed_get(port: int, path: str, timeout: float = 30) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one GET."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
        resp = conn.getresponse()
        return resp.status, resp.read(), time.monotonic() - start
    finally:
        conn.close()


class Drip:
    """Send each socket the next byte of an endless request every ``every``
    seconds; note when the server closes it (``closed_after``: seconds from
    that socket's connection, per socket)."""

    def __init__(self, port: int, n: int, every: float = 2.0) -> None:
        self.socks, self.connected = [], []
        for _ in range(n):  # when each connected: a full accept queue delays some
            self.socks += connect(port, 1)
            self.connected.append(time.monotonic())
        self.request = (
            f"GET /?token=x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "X-Pad: " + "a" * 10_000
        ).encode()
        self.every = every
        self.sent = [0] * n
        self.closed_after: dict[int, float] = {}
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, s in enumerate(self.socks):
                if i in self.closed_after:
                    continue
                try:
                    readable, _, _ = select.select([s], [], [], 0)
                    if readable and not s.recv(1):
                        raise ConnectionResetError  # the server closed it
                    s.send(self.request[self.sent[i] : self.sent[i] + 1])
                    self.sent[i] += 1
                except OSError:
                    self.closed_after[i] = time.monotonic() - self.connected[i]
            self._stop.wait(self.every)

    def open_count(self) -> int:
        return len(self.socks) - len(self.closed_after)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for s in self.socks:
            s.close()
