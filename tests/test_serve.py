"""kpeek serve: loopback only, token required, a page that refreshes itself."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

import slow_clients
from browser import Browser
from capabilities import require
from kpeek.web.server import LiveServer
from scenarios import PIPE_FORK_DUP2, family


@contextmanager
def running(pids: list[int], interval: float = 1.0) -> Iterator[LiveServer]:
    server = LiveServer(0, pids, interval)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(server: LiveServer, path: str, host: str | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{server.port}"})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_token_is_required_for_every_path():
    require("graphviz")
    with family(PIPE_FORK_DUP2) as fam, running([fam.info["parent"]]) as server:
        token = server.token
        assert len(token) >= 32
        wrong_last = token[:-1] + ("y" if token[-1] == "x" else "x")  # always one char off
        assert token.upper() != token  # so the upper-cased token is wrong too
        for path in (
            "/",
            "/diagram.svg",
            "/?token=",
            f"/?token={wrong_last}",
            f"/diagram.svg?token={token.upper()}",
            "/nothing",
        ):
            status, body, _ = get(server, path)
            assert status == 403, path
            assert b"svg" not in body and token.encode() not in body
        # right token, wrong Host (a DNS-rebinding page): refused too
        assert get(server, f"/?token={token}", host=f"evil.example:{server.port}")[0] == 403
        status, body, headers = get(server, f"/?token={token}")
        assert status == 200 and b"<!DOCTYPE html>" in body
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        status, svg, headers = get(server, f"/diagram.svg?token={token}")
        assert status == 200 and headers["Content-Type"] == "image/svg+xml"
        texts = " ".join(
            "".join(t.itertext())
            for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")
        )
        assert f"PID {fam.info['parent']}" in texts
        # another process, chosen in the URL; junk pids are a 400, not a crash
        status, svg, _ = get(server, f"/diagram.svg?token={token}&pids={fam.info['child']}")
        assert status == 200 and f"PID {fam.info['child']}".encode() in svg
        assert get(server, f"/diagram.svg?token={token}&pids=1;rm")[0] == 400
        assert get(server, f"/diagram.svg?token={token}&pids=999999999")[0] == 400


def _other_addresses() -> list[str]:
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                found.append(a.address)
    return found


@pytest.mark.timeout(60)
def test_not_reachable_on_other_addresses():
    with running([os.getpid()]) as server:
        assert server.server_address[0] == "127.0.0.1"
        targets = ["127.0.0.2", *_other_addresses()]
        for address in targets:
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(3)
                s.connect((address, server.port))
        # and the loopback address itself is served
        with socket.create_connection(("127.0.0.1", server.port), timeout=3):
            pass


@pytest.mark.timeout(120)
def test_live_page_in_chromium_shows_and_refreshes_the_diagram():
    require("graphviz", "chromium")
    with (
        family(PIPE_FORK_DUP2) as fam,
        running([fam.info["parent"]], interval=0.5) as server,
        Browser() as browser,
    ):
        browser.open(server.url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            updates = browser.evaluate(
                "Number(document.getElementById('diagram').dataset.updates || 0)"
            )
            if updates >= 2:
                break
            time.sleep(0.2)
        assert updates >= 2  # it fetched the diagram again by itself
        texts = browser.evaluate(
            "Array.from(document.querySelectorAll('#diagram svg text')).map(t => t.textContent)"
        )
        assert f"PID {fam.info['parent']}" in " ".join(texts)
        assert "open file table" in texts
        assert browser.evaluate("document.getElementById('pids').value") == str(fam.info["parent"])
        # the same page without the token: refused
        browser.open(f"http://127.0.0.1:{server.port}/")
        assert "forbidden" in browser.evaluate("document.body.textContent")


@pytest.mark.timeout(60)
def test_serve_command_prints_a_tokened_loopback_url_and_stops_on_ctrl_c():
    require("graphviz")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpeek", "serve", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)", line)
        assert match, line
        port, token = int(match[1]), match[2]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/diagram.svg?token={token}")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # start-up at load 50 took >10 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


ON_SIGNAL = """
import tempfile
path = tempfile.mktemp(prefix="kpeek-live-")
opened = []
signal.signal(signal.SIGUSR1, lambda *a: opened.append(os.open(path, os.O_RDWR | os.O_CREAT)))
report(pid=os.getpid(), path=path)
"""

CHANGED = "#ffe680"


@pytest.mark.timeout(120)
def test_live_page_highlights_what_changed_since_the_last_refresh():
    require("graphviz", "chromium")
    with family(ON_SIGNAL) as fam, running([fam.pid], interval=0.5) as server, Browser() as browser:
        browser.open(server.url)
        svg_text = (
            "Array.from(document.querySelectorAll('#diagram svg text'))"
            ".map(t => t.textContent).join('\\n')"
        )
        yellow = (
            "Array.from(document.querySelectorAll('#diagram svg polygon'))"
            f".filter(p => p.getAttribute('fill') === '{CHANGED}').length"
        )

        def wait(condition) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, "the page did not update"
                time.sleep(0.1)

        wait(
            lambda: (
                browser.evaluate("Number(document.getElementById('diagram').dataset.updates || 0)")
                >= 2
            )
        )
        assert browser.evaluate(yellow) == 0  # nothing changed between refreshes
        os.kill(fam.pid, signal.SIGUSR1)
        wait(lambda: fam.info["path"] in browser.evaluate(svg_text))
        assert browser.evaluate(yellow) >= 2  # the new fd and its new open file
        wait(lambda: browser.evaluate(yellow) == 0)  # and next time it is old news
        assert fam.info["path"] in browser.evaluate(svg_text)


@contextmanager
def serve_process(pid: int) -> Iterator[tuple[subprocess.Popen, int, str]]:
    """`kpeek serve PID` as a user starts it: (process, port, token)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpeek", "serve", str(pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)", proc.stdout.readline())
        assert match, proc.stderr.read()
        yield proc, int(match[1]), match[2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(180)
def test_idle_and_slow_drip_clients_hold_no_worker_and_a_token_request_is_answered():
    """The issue's goal: 200 idle connections, and (the slowloris hole) 20
    clients that send their request one byte a second and never finish it:
    more than the workers. A request with the token is answered while they are
    all connected; every one of them is closed by the deadline for the whole
    request head, and after 15 s the server runs at most 20 threads."""
    require("graphviz")
    from kpeek.web import server as web

    with family(PIPE_FORK_DUP2) as fam, serve_process(fam.info["parent"]) as (proc, port, token):
        idle = slow_clients.connect(port, 200)
        drip = slow_clients.Drip(port, 2 * web.WORKERS + 4, every=1.0)
        try:
            time.sleep(3)  # every slow client has sent bytes: before the fix each held a worker
            status, body, _ = slow_clients.timed_get(port, f"/diagram.svg?token={token}")
            answered_at = time.monotonic() - min(drip.connected)
            assert status == 200 and body.lstrip().startswith(b"<")
            assert answered_at < web.IDLE_TIMEOUT, answered_at  # the slow ones were all there
            assert min(drip.sent) >= 2
            time.sleep(max(0.0, 15 - (time.monotonic() - drip.start)))
            assert slow_clients.threads_of(proc.pid) <= 20
            assert drip.open_count() == 0, drip.closed_after  # no byte-a-second client outlives it
            assert max(drip.closed_after.values()) < web.IDLE_TIMEOUT + 4, drip.closed_after
            assert all(not s.recv(1) for s in idle[:20])  # the idle ones were closed too
            assert slow_clients.timed_get(port, f"/?token={token}")[0] == 200
        finally:
            drip.close()
            for s in idle:
                s.close()


@pytest.mark.timeout(60)
def test_a_diagram_with_one_pid_gone_still_draws_the_others():
    require("graphviz")
    with family(PIPE_FORK_DUP2) as fam, running([fam.info["parent"]]) as server:
        gone = subprocess.Popen(["true"])
        gone.wait()
        status, body, _ = get(
            server, f"/diagram.svg?pids={fam.info['parent']},{gone.pid}&token={server.token}"
        )
        assert status == 200, body
        assert b"<svg" in body


@pytest.mark.timeout(60)
def test_sigterm_stops_serve_cleanly():
    require("graphviz")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpeek", "serve", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "token=" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
