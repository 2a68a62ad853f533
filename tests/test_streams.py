"""Every verb under hostile output and cache set-ups: one line or nothing, never a traceback.

Closed stdout, a full disk (/dev/full), a reader that goes away (`| head -1`)
and a HOME / XDG_CACHE_HOME nobody can write: each run must end with a
documented exit code and at most one line on stderr per problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capabilities import require
from corpus import corpus_dir

KPEEK = [sys.executable, "-m", "kpeek"]
DOCUMENTED = {0, 1, 2, 3, 141}


def _function_address(name: str) -> str:
    for line in Path("/proc/kallsyms").read_text().splitlines():
        addr, _kind, sym = line.split()[:3]
        if sym == name:
            return "0x" + addr
    pytest.skip(f"{name} not in /proc/kallsyms")


def _report_log(tmp: Path) -> str:
    """A real kernel log with a report in it: corpus file 0 or a made-up oops."""
    root = corpus_dir()
    src = root / "0" if root is not None else None
    log = tmp / "report.log"
    text = src.read_text(errors="replace").split("\n\n", 1)[-1] if src and src.exists() else ""
    log.write_text(text or "BUG: kernel NULL pointer dereference, address: 0000000000000000\n")
    return str(log)


def _verbs(tmp: Path) -> list[list[str]]:
    me = str(os.getpid())
    text = _function_address("schedule")
    return [
        ["ps"], ["files"], ["doctor", "--no-kernel-log"], ["oops", "--full", _report_log(tmp)],
        ["struct", "task_struct"], ["sym", "schedule"], ["dis", "schedule"], ["rd", text],
        ["task", me], ["bt", me], ["list", text], ["trace", "--json", "--", "true"], ["--help"],
        ["serve", "--port", "99999999"],
    ]


def _run(argv: list[str], how: str, env: dict[str, str]) -> tuple[int, str]:
    cmd = KPEEK + argv
    if how == "closed":
        p = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cmd], stderr=subprocess.PIPE,
                           env=env, timeout=200)
        return p.returncode, p.stderr.decode(errors="replace")
    if how == "full":
        with open("/dev/full", "w") as full:
            p = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, env=env, timeout=200)
        return p.returncode, p.stderr.decode(errors="replace")
    if how == "pipe":
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.read(1)  # the reader takes one byte (or EOF), then goes away
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=200)
        return proc.returncode, err.decode(errors="replace")
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                       timeout=200)
    return p.returncode, p.stderr.decode(errors="replace")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KPEEK_DEBUG", None)
    env.update(extra)
    return env


@pytest.mark.timeout(400)  # 14 runs of kpeek; slow on a loaded 2-core machine
@pytest.mark.parametrize("how", ["closed", "full", "pipe", "nocache", "nohome"])
def test_every_verb_without_traceback(tmp_path: Path, how: str) -> None:
    require("root", "bpf")
    env = _env()
    if how == "nocache":  # a cache nobody can create: /proc/sys refuses new folders
        env = _env(HOME="/nonexistent-kpeek-home", XDG_CACHE_HOME="/proc/sys")
    home = tmp_path / "missing-home"
    if how == "nohome":  # a HOME that does not exist: no cache, and kpeek does not make it
        env = _env(HOME=str(home))
        env.pop("XDG_CACHE_HOME", None)
    verbs = _verbs(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda argv: (argv, *_run(argv, how, env)), verbs))
    bad = []
    for argv, code, err in results:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if "Traceback" in err or code not in DOCUMENTED or "internal error" in err:
            bad.append(f"{' '.join(argv)}: exit {code}: {err[-400:]}")
        elif how in ("closed", "full") and argv[0] not in ("serve",) and code != 2:
            bad.append(f"{' '.join(argv)}: a lost output must say so (exit 2), got {code}")
        elif how == "pipe" and code not in (0, 141) and argv[0] not in ("serve", "list"):
            bad.append(f"{' '.join(argv)}: | head -1 gave exit {code}: {err[-200:]}")
        elif how in ("closed", "full") and len(lines) > 1 + (argv[0] == "trace"):
            bad.append(f"{' '.join(argv)}: more than one line: {err[-400:]}")
    assert not bad, "\n".join(bad)
    assert not home.exists(), list(home.rglob("*"))


def test_broken_pipe_is_quiet_and_not_a_finding() -> None:
    """`kpeek ps | head -1`: exit 141 (SIGPIPE's convention), not 1, and no message."""
    require("root")
    p = subprocess.run(["/bin/bash", "-c", f"{sys.executable} -m kpeek ps --source procfs -t "
                        "| head -1 >/dev/null; echo ${PIPESTATUS[0]}"],
                       capture_output=True, text=True, env=_env(), timeout=200)
    assert p.stdout.strip() in ("0", "141"), p
    assert p.stderr == "", p.stderr


def test_unexpected_error_is_one_line(tmp_path: Path) -> None:
    """The last-resort handler: a bug shows one line with a hint, not a traceback."""
    code = (
        "import sys; import kpeek.cli as c\n"
        "def boom(argv): raise RuntimeError('deliberate')\n"
        "c._run = boom\n"
        "sys.exit(c.main(['ps']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert p.returncode == 70
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and "bug" in p.stderr and "deliberate" in p.stderr
