"""Untrusted names and unprivileged users: output stays inert, errors stay one line."""

from __future__ import annotations

import json
import os
import sys

import pytest

from capabilities import require
from kpeek.cli import main
from kpeek.textsafe import encode
from scenarios import family

EVIL_COMM = b"\x1b[31mX\n<b>\xff"  # ANSI escape, newline, markup, invalid UTF-8


@pytest.fixture
def evil(tmp_path):
    path = tmp_path / "evil\nname<script>\x1b[2J"
    script = f"""
    with open("/proc/self/comm", "wb") as f:
        f.write({EVIL_COMM!r})
    fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
    report(pid=os.getpid(), fd=fd)
    """
    with family(script) as fam:
        yield fam.info["pid"], fam.info["fd"], str(path)


@pytest.mark.parametrize("argv", [["ps", "-p"], ["files"], ["files", "--container"]])
def test_text_output_escapes_names(evil, capsys, argv):
    pid, _, _ = evil
    assert main([*argv, str(pid), "--source", "procfs"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[31mX\\n<b>\\xff" in out
    if argv == ["files"]:
        assert "evil\\nname<script>\\x1b[2J" in out
        row = next(line for line in out.splitlines() if "evil" in line)
        assert row.rstrip().endswith("\\x1b[2J")  # the whole path on one row


def test_cplayground_lines_cannot_be_forged(evil, capsys):
    pid, _, _ = evil
    assert main(["files", "--format", "cplayground", "--all", "--source", "procfs", str(pid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line.split("\t")) == 6 for line in lines if line)
    assert "\x1b" not in "".join(lines)


def test_json_holds_names_exactly(evil, capsys):
    pid, fd, path = evil
    assert main(["files", "--json", "--source", "procfs", str(pid)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (proc,) = doc["processes"]
    assert encode(proc["comm"]) == EVIL_COMM
    (entry,) = [d for d in proc["fds"] if d["fd"] == fd]
    assert entry["path"] == path


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run kpeek's main in a child that dropped to uid/gid 65534."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")  # pytest replaced sys.stderr in this process
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until _exit)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(argv)
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(w)
    err = b""
    while chunk := os.read(r, 4096):
        err += chunk
    os.close(r)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), err.decode()


@pytest.mark.parametrize("verb", ["bt", "files"])
def test_other_users_process_is_not_permitted(verb):
    require("root")
    with family("report(pid=os.getpid())") as fam:
        source = ["--source", "procfs"] if verb == "files" else []
        code, err = _as_nobody([verb, str(fam.info["pid"]), *source])
    # files goes on with the other pids, as lsof does, and exits 1; bt stops (3).
    assert code == (1 if verb == "files" else 3), err
    assert err.startswith("kpeek: ") and err.count("\n") == 1
    assert "root" in err
