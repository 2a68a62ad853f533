"""Diagrams of the three tables for real process families on this kernel."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from capabilities import require
from kpeek.cli import main
from kpeek.render.diagram import render_diagram
from kpeek.render.diagram_pipes import blocking_write_ends
from kpeek.sources import procfs
from kpeek.textsafe import encode
from scenarios import PIPE_FORK_DUP2, children_of, family

FD_EDGE = re.compile(r"^  p(\d+):fd(\d+):e -> (f\d+):w \[(.*)\];$", re.M)
FILE_EDGE = re.compile(r"^  (f\d+):e -> (i\d+):w", re.M)
NODE = re.compile(r"^\s+((?:p|f|i)\d+) \[id=\"[^\"]*\", class=\"([^\"]*)\", label=<(.*)>\];$", re.M)
SVG = "{http://www.w3.org/2000/svg}"


def parse(dot: str) -> tuple[dict[tuple[int, int], str], dict[str, str], dict[str, str]]:
    """(fd slot -> file node, file node -> inode node, node -> label) from our DOT."""
    fd_to_file = {(int(p), int(fd)): f for p, fd, f, _ in FD_EDGE.findall(dot)}
    file_to_inode = dict(FILE_EDGE.findall(dot))
    labels = {name: label for name, _, label in NODE.findall(dot)}
    return fd_to_file, file_to_inode, labels


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def svg_texts(svg: bytes) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


@pytest.mark.timeout(60)
def test_fork_dup2_shared_files_two_opens_and_pipe_ends():
    with family(PIPE_FORK_DUP2) as fam:
        i = fam.info
        parent, child = i["parent"], i["child"]
        # The child dup2()s after the parent reported: wait for its fd 1.
        pipe_w = os.readlink(f"/proc/{parent}/fd/{i['w']}")
        wait_for(lambda: os.readlink(f"/proc/{child}/fd/1") == pipe_w)
        snap = procfs.take_snapshot([parent, child], threads=False)
        dot = render_diagram(snap, [parent, child], "dot").decode("ascii")

    fd_to_file, file_to_inode, labels = parse(dot)
    # fork after open: one open-file entry, arrows from both processes.
    assert fd_to_file[(parent, i["shared"])] == fd_to_file[(child, i["shared"])]
    # two open() calls of one file: two entries, one inode.
    fa, fb = fd_to_file[(parent, i["a"])], fd_to_file[(parent, i["b"])]
    assert fa != fb
    shared_inode = file_to_inode[fd_to_file[(parent, i["shared"])]]
    assert file_to_inode[fa] == file_to_inode[fb] == shared_inode
    # dup: same entry; pipe read end held by parent r, dup and the child's r.
    read_end = fd_to_file[(parent, i["r"])]
    assert fd_to_file[(parent, i["dup"])] == fd_to_file[(child, i["r"])] == read_end
    assert "read end" in labels[read_end] and "offset 0" in labels[read_end]
    held = ",".join(map(str, sorted([i["r"], i["dup"]])))
    assert f"{parent} {snap.task(parent).comm} (fd {held})" in labels[read_end]
    # dup2(w, 1) in the child: its stdout is the pipe's write end.
    write_end = fd_to_file[(child, 1)]
    assert write_end == fd_to_file[(parent, i["w"])] == fd_to_file[(child, i["w"])]
    assert "write end" in labels[write_end]
    assert file_to_inode[write_end] == file_to_inode[read_end]
    assert "offset 5" in labels[fd_to_file[(parent, i["shared"])]]
    # every fd of both processes has exactly one arrow
    assert len([k for k in fd_to_file if k[0] in (parent, child)]) == len(snap.fds)
    # close-on-exec is marked on exactly the cloexec fds (os.pipe/os.open set it)
    parent_label = labels[f"p{parent}"]
    assert parent_label.count("close-on-exec") == sum(d.cloexec for d in snap.fds_of(parent))
    assert "host (PID namespace" in dot


@pytest.mark.timeout(60)
def test_svg_and_html_are_laid_out_by_graphviz():
    require("graphviz")
    with family(PIPE_FORK_DUP2) as fam:
        snap = procfs.take_snapshot([fam.info["parent"]], threads=False)
        svg = render_diagram(snap, [fam.info["parent"]], "svg")
        page = render_diagram(snap, [fam.info["parent"]], "html").decode()
    texts = svg_texts(svg)
    for column in ("file descriptor tables", "open file table", "inode table"):
        assert column in texts
    assert f"PID {fam.info['parent']}" in " ".join(texts)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "http" not in page.split(
        "<svg", 1)[0].replace("http-equiv", "")


EVIL_COMM = b"<b>x</b>&\"'\n\xff"  # 15 bytes: fits comm (16 with NUL)
EVIL_NAME = b"<img src=x onerror=alert(1)> \"q\" \\N\n\xfe.txt"
EVIL_SCRIPT = """
import ctypes
libc = ctypes.CDLL(None)
libc.prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)  # PR_SET_NAME
fd = os.open(bytes.fromhex(sys.argv[2]), os.O_RDWR | os.O_CREAT, 0o600)
report(pid=os.getpid(), fd=fd)
"""


@pytest.mark.timeout(60)
def test_hostile_names_are_text_in_dot_svg_and_html(tmp_path):
    require("graphviz")
    from scenarios import _PRELUDE  # the same prelude family() uses

    path = encode(str(tmp_path)) + b"/" + EVIL_NAME
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + EVIL_SCRIPT, EVIL_COMM.hex(), path.hex()],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        snap = procfs.take_snapshot([info["pid"]], threads=False)
        assert encode(snap.task(info["pid"]).comm) == EVIL_COMM
        dot = render_diagram(snap, [info["pid"]], "dot")
        svg = render_diagram(snap, [info["pid"]], "svg")
        page = render_diagram(snap, [info["pid"]], "html")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    text = dot.decode("ascii")
    assert "<img" not in text and "<b>x" not in text and "\\N" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    root = ET.fromstring(svg)  # well-formed XML
    tags = {el.tag.removeprefix(SVG) for el in root.iter()}
    assert not tags & {"img", "b", "script", "foreignObject", "iframe"}
    joined = "\n".join(svg_texts(svg))
    assert "<b>x</b>&amp;" not in joined  # entity text is not double-decoded
    assert "<b>x</b>&\"'\\n\\xff" in joined  # the comm, escaped to one printable line
    assert "\\xfe.txt" in joined
    html = page.decode()
    assert "<img" not in html and "<b>x" not in html and "<script" not in html


SELF_BLOCK = """
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.dup2(r, 0)
    os.close(r)                 # ... but forgets os.close(w)
    os.read(0, 100)             # gets the data
    os.read(0, 100)             # waits for end-of-file forever
    os._exit(0)
os.write(w, b"data")
os.close(w)
os.close(r)
report(parent=os.getpid(), child=child, w=w)
"""

GOOD_PIPE = """
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.dup2(r, 0)
    os.close(r)
    os.close(w)
    hold()
os.close(r)
report(parent=os.getpid(), child=child, w=w)
"""


def _stuck_in_pipe_read(pid: int) -> bool:
    return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text() or \
        Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "S"


@pytest.mark.timeout(60)
def test_write_end_keeping_reader_from_eof_is_highlighted():
    with family(SELF_BLOCK) as fam:
        child, w = fam.info["child"], fam.info["w"]
        wait_for(lambda: _stuck_in_pipe_read(child))
        snap = procfs.take_snapshot([fam.pid, child], threads=False)
        dot = render_diagram(snap, [fam.pid, child], "dot").decode()
    (b,) = blocking_write_ends(snap)
    assert (b.fd.tgid, b.fd.fd) == (child, w) and b.self_held and b.readers == (child,)
    fd_to_file, _, labels = parse(dot)
    edges = FD_EDGE.findall(dot)
    blocking = [(int(p), int(fd)) for p, fd, _, attrs in edges if "blocking" in attrs]
    assert blocking == [(child, w)]
    assert f"keeps reader {child} from end-of-file" in labels[fd_to_file[(child, w)]]


WAITING_PARENT = """
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.dup2(r, 0)
    os.close(r)
    os.close(w)
    os.read(0, 100)             # waits for data or end-of-file
    os._exit(0)
os.close(r)
sys.stdout.write(json.dumps(dict(child=child, w=w)) + "\\n")
sys.stdout.flush()
if sys.argv[1] == "wait":
    os.waitpid(child, 0)        # kept w open, waits for the child: never ends
else:
    hold()                      # kept w open, may still write: not flagged
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["wait", "hold"])
def test_parent_keeping_the_write_end(mode):
    from scenarios import _PRELUDE

    proc = subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + WAITING_PARENT, mode],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        child = info["child"]
        wait_for(lambda: "pipe_read" in Path(f"/proc/{child}/wchan").read_text())
        expected = "do_wait" if mode == "wait" else ""  # hold: any sleep will do
        wait_for(lambda: Path(f"/proc/{proc.pid}/wchan").read_text() not in ("0", "")
                 and expected in Path(f"/proc/{proc.pid}/wchan").read_text())
        snap = procfs.take_snapshot([proc.pid, child], threads=False)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    found = blocking_write_ends(snap)
    if mode == "hold":
        assert found == []
    else:
        (b,) = found
        assert (b.fd.tgid, b.fd.fd) == (proc.pid, info["w"])
        assert not b.self_held and b.readers == (child,)


@pytest.mark.timeout(60)
def test_pid_namespace_is_boxed_like_a_container():
    script = """
    child = os.fork()
    if child == 0:
        hold()
    report(inner=os.getpid())
    """
    with family(script, prefix=("unshare", "--pid", "--fork", "--kill-child")) as fam:
        (init,) = children_of(fam.pid)
        wait_for(lambda: len(children_of(init)) == 1)
        kid = children_of(init)[0]
        snap = procfs.take_snapshot([init, kid, os.getpid()], threads=False)
        dot = render_diagram(snap, [init, kid, os.getpid()], "dot").decode()
    ns = snap.task(init).pidns
    block = dot.split(f'id="pidns-{ns}"', 1)[1].split("    }", 1)[0]
    assert f"p{init} " in block and f"p{kid} " in block and f"p{os.getpid()} " not in block
    assert f"container: PID namespace {ns}" in dot and "2 processes" in dot
    assert "pid 1 in container" in dot and "pid 2 in container" in dot


MANY = """
import tempfile
d = tempfile.mkdtemp(prefix="kpeek-many-")
kids = []
for n in range(19):
    pid = os.fork()
    if pid == 0:
        for k in range(7):
            os.open(f"{d}/p{n}-f{k}", os.O_RDWR | os.O_CREAT, 0o600)
        hold()
    kids.append(pid)
shared = [os.open(f"{d}/shared{k}", os.O_RDWR | os.O_CREAT, 0o600) for k in range(7)]
report(kids=kids, dir=d)
"""


@pytest.mark.timeout(90)
def test_twenty_processes_two_hundred_fds(tmp_path):
    require("graphviz")
    with family(MANY) as fam:
        pids = [fam.pid, *fam.info["kids"]]
        wait_for(lambda: all(len(os.listdir(f"/proc/{p}/fd")) >= 10 for p in pids))
        snap = procfs.take_snapshot(pids, threads=False)
        start = time.monotonic()
        svg = render_diagram(snap, pids, "svg")
        elapsed = time.monotonic() - start
    assert len(snap.fds) >= 200
    root = ET.fromstring(svg)
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node process"]
    assert len(groups) == 20
    edges = [g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("e-fd-")]
    assert len(edges) == len(snap.fds)
    assert elapsed < 30


def test_files_command_writes_all_three_formats(tmp_path):
    require("graphviz")
    with family(PIPE_FORK_DUP2) as fam:
        out = {fmt: tmp_path / f"d.{fmt}" for fmt in ("dot", "svg", "html")}
        argv = ["files", "--source", "procfs", str(fam.info["parent"])]
        for fmt, path in out.items():
            argv += [f"--{fmt}", str(path)]
        assert main(argv) == 0
    assert out["dot"].read_text().startswith("digraph files {")
    ET.fromstring(out["svg"].read_bytes())
    assert "<svg" in out["html"].read_text()


def test_unknown_format_is_a_usage_error():
    from kpeek.errors import UsageError

    snap = procfs.take_snapshot([os.getpid()], threads=False)
    with pytest.raises(UsageError):
        render_diagram(snap, [os.getpid()], "pdf")
