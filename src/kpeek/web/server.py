"""A local HTTP server for the live diagram: 127.0.0.1 only, token required.

Every request must carry the random token printed with the URL (compared in
constant time) and a Host header naming the loopback address it listens on
(a page on another site cannot reach it through DNS rebinding); anything
else gets 403. Responses are never cached and send no Referer, so the token
stays in the address bar.
"""

from __future__ import annotations

import io
import os
import queue
import secrets
import selectors
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from kpeek.errors import KpeekError
from kpeek.model import Snapshot
from kpeek.render import dot, html
from kpeek.render.diagram import Marks, build_dot

LOOPBACK = "127.0.0.1"
MAX_PIDS = 64
WORKERS = 8  # threads that answer requests; idle connections cannot pile up threads
BACKLOG = 32  # connections with a request waiting for a worker; more are closed
IDLE_TIMEOUT = 10.0  # seconds a connection has to send its whole request head
MAX_PENDING = 512  # connections whose request head is not complete yet; more are closed
MAX_HEAD = 16 << 10  # bytes of request line and headers; a GET needs far less

SnapshotFn = Callable[[Sequence[int]], Snapshot]


def _default_snapshot(pids: Sequence[int]) -> Snapshot:
    from kpeek.sources import procfs

    # A pid that exited draws nothing rather than failing the whole diagram.
    alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
    if not alive:
        raise KpeekError(f"no such process: {', '.join(map(str, pids))}")
    return procfs.take_snapshot(alive, threads=False)


class LiveServer(HTTPServer):
    """An HTTP server bound to 127.0.0.1 with the page's state, answering with a
    fixed pool of worker threads. One selector thread reads every new
    connection's request head (request line and headers) without blocking and
    hands it to a worker only once it is complete; a connection that has not
    sent it all within IDLE_TIMEOUT of connecting is closed. So idle,
    half-open and slow-drip clients (one byte every few seconds) hold no worker
    and no thread of their own."""

    def __init__(
        self,
        port: int = 0,
        pids: Sequence[int] = (),
        interval: float = 2.0,
        snapshot: SnapshotFn = _default_snapshot,
    ) -> None:
        super().__init__((LOOPBACK, port), _Handler)
        self._waiting: queue.Queue = queue.Queue(BACKLOG)
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"kpeek-{i}")
            for i in range(WORKERS)
        ]
        self._pending: dict = {}  # socket -> (client address, deadline)
        self._pending_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="kpeek-idle")
        self._closing = False
        for t in (*self._workers, self._watcher):
            t.start()
        self.token = secrets.token_urlsafe(24)
        self.pids = list(pids)
        self.interval = interval
        self.snapshot = snapshot
        self.lock = threading.Lock()  # one snapshot and layout at a time: 2 cores
        self.previous: dict[tuple[int, ...], Snapshot] = {}

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self._pending_lock:
            if len(self._pending) >= MAX_PENDING:
                self.shutdown_request(request)
                return
            request.setblocking(False)
            # The deadline is for the whole head, counted from the connection:
            # bytes that trickle in do not extend it (slowloris).
            deadline = time.monotonic() + IDLE_TIMEOUT
            self._pending[request] = _Pending(client_address, deadline)
            self._selector.register(request, selectors.EVENT_READ)

    def _watch(self) -> None:
        """Read what pending connections sent; hand a connection to the workers
        once its request head is complete, close the ones past their deadline,
        that closed, or that send more than MAX_HEAD."""
        while not self._closing:
            ready = self._selector.select(timeout=0.5) if self._pending else ()
            if not self._pending:
                time.sleep(0.05)
            now = time.monotonic()
            with self._pending_lock:
                for key, _ in ready:
                    request = key.fileobj
                    pending = self._pending.get(request)
                    if pending is None:
                        continue
                    try:
                        data = request.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    pending.head += data
                    complete = _head_complete(pending.head)
                    if complete or not data or len(pending.head) > MAX_HEAD:
                        self._forget(request)
                        if complete:
                            self._hand_over(request, pending)
                        else:
                            self.shutdown_request(request)
                for request, pending in list(self._pending.items()):
                    if now > pending.deadline:
                        self._forget(request)
                        self.shutdown_request(request)

    def _forget(self, request) -> None:
        del self._pending[request]
        self._selector.unregister(request)

    def _hand_over(self, request, pending: _Pending) -> None:
        request.setblocking(True)  # the handler sets its own timeout for writing
        try:
            self._waiting.put_nowait((request, pending.address, bytes(pending.head)))
        except queue.Full:
            self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._waiting.get()
            if item is None:
                return
            request, client_address, head = item
            try:
                _Handler(request, client_address, self, head)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        pass  # a client that went away is not worth a traceback on the terminal

    def server_close(self) -> None:
        super().server_close()
        self._closing = True
        for _ in self._workers:
            try:
                self._waiting.put_nowait(None)
            except queue.Full:
                break

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/?token={self.token}"

    def marks_since_last(self, key: tuple[int, ...], snap: Snapshot) -> Marks | None:
        """What changed since the last drawing of the same processes (yellow)."""
        from kpeek.trace.changes import changes_between

        before = self.previous.get(key)
        self.previous = {key: snap}  # one page at a time is the common case
        if before is None:
            return None
        view = changes_between(before, snap)
        return Marks(
            changed_fds=view.marks.changed_fds,
            changed_files=view.marks.changed_files,
            changed_processes=view.marks.changed_processes,
        )

    def allowed_hosts(self) -> set[str]:
        return {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}


class _Pending:
    """A connection whose request head is still arriving."""

    __slots__ = ("address", "deadline", "head")

    def __init__(self, address: object, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.head = bytearray()


def _head_complete(head: bytes | bytearray) -> bool:
    """The request line and headers have all arrived (a blank line ends them;
    http.server accepts bare LF line ends too)."""
    return b"\r\n\r\n" in head or b"\n\n" in head


def parse_pids(text: str) -> list[int]:
    """ "1, 2 3" -> [1, 2, 3]; raises ValueError on anything else."""
    parts = [p for p in text.replace(",", " ").split() if p]
    pids = [int(p) for p in parts]
    if any(p <= 0 for p in pids) or len(pids) > MAX_PIDS:
        raise ValueError("bad pid list")
    return pids


class _Handler(BaseHTTPRequestHandler):
    server: LiveServer
    server_version = "kpeek"
    sys_version = ""
    timeout = IDLE_TIMEOUT  # socket timeout for writing the answer

    def __init__(self, request, client_address, server, head: bytes = b"") -> None:
        self._head = head
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        # The request head was read whole by the server's selector thread; a
        # GET or HEAD has no body, so the handler reads nothing from the socket.
        self.rfile = io.BytesIO(self._head)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the URL with the token must not end up in logs

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'; img-src data:; frame-ancestors 'none'",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: HTTPStatus, message: str) -> None:
        self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        host = self.headers.get("Host", "")
        token = (query.get("token") or [""])[0]
        return host in self.server.allowed_hosts() and secrets.compare_digest(
            token.encode(), self.server.token.encode()
        )

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorised(query):
            self._text(HTTPStatus.FORBIDDEN, "forbidden: open the URL kpeek serve printed")
            return
        if url.path == "/":
            config = {
                "token": self.server.token,
                "pids": self.server.pids,
                "interval": self.server.interval,
            }
            page = html.live_page("kpeek serve: live file tables", config)
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        elif url.path == "/diagram.svg":
            self._diagram(query)
        else:
            self._text(HTTPStatus.NOT_FOUND, "not found")

    def _diagram(self, query: dict[str, list[str]]) -> None:
        raw = (query.get("pids") or [""])[0]
        try:
            pids = parse_pids(raw) if raw else self.server.pids
        except ValueError:
            self._text(HTTPStatus.BAD_REQUEST, "pids: give up to 64 process ids")
            return
        if not pids:
            self._text(HTTPStatus.BAD_REQUEST, "choose processes: give their PIDs")
            return
        try:
            with self.server.lock:
                snap = self.server.snapshot(pids)
                tgids = [t.tgid for t in snap.processes()]
                key = tuple(sorted(pids))
                marks = self.server.marks_since_last(key, snap)
                svg = dot.run_dot(build_dot(snap, tgids, marks), "svg")
        except KpeekError as e:
            self._text(HTTPStatus.BAD_REQUEST, str(e))
            return
        self._send(HTTPStatus.OK, svg, "image/svg+xml")

    def do_POST(self) -> None:
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, "read only")
