"""The verb table: every verb listed in --help, only the chosen one imported."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

import pytest

from kpeek.cli import VERBS, _Parser, build_parser


def test_help_lists_every_verb_with_its_modules_help_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kpeek", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in VERBS:
        assert f"\n    {verb} " in out
    # The table's help line is the one each module registers.
    for verb, (module, help_line) in VERBS.items():
        sub = argparse.ArgumentParser().add_subparsers(parser_class=_Parser)
        __import__(module, fromlist=["register"]).register(sub)
        assert [a.dest for a in sub._choices_actions] == [verb]
        assert sub._choices_actions[0].help == help_line


def test_only_the_chosen_verb_is_imported() -> None:
    code = (
        "import sys, os\n"
        "from kpeek.cli import main\n"
        "main(['ps', '--source', 'procfs', '-p', str(os.getpid()), '--json'])\n"
        "print([m for m in sys.modules if m.startswith('kpeek.commands.')])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert json.loads(out[0])["tasks"][0]["pid"] > 0
    assert sorted(ast.literal_eval(out[1])) == ["kpeek.commands.common", "kpeek.commands.ps"]


_UNWANTED_AT_START = ("locale", "typing", "gettext", "signal", "encodings.ascii")


@pytest.mark.parametrize("argv", [["ps", "-p", "{pid}"], ["files", "{pid}"],
                                  ["files", "{pid}", "--source", "procfs"], ["ps", "--help"]])
def test_start_up_imports_neither_locale_nor_typing(argv) -> None:
    """argparse's messages are not looked up in gettext catalogs (a search
    of the disk for each, with locale imported first: 3.7 ms of every
    start-up), nor is gettext imported (1 ms); the file tables do not import
    typing (2 ms), nor the BPF load signal's enums (0.9 ms), nor is a file
    opened as ASCII (a codec search and import)."""
    code = (
        "import contextlib, io, sys\n"
        f"_UNWANTED = {_UNWANTED_AT_START!r}\n"
        "from kpeek.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(sys.argv[1:])\n"
        "print(code, [m for m in _UNWANTED if m in sys.modules])\n"
    )
    args = [a.format(pid=os.getpid()) for a in argv]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "LANG": "C.UTF-8"}, check=True).stdout
    assert out.split(None, 1) == ["0", "[]\n"]


_ENTRY_PROBE = """
import atexit, sys, threading, time
from kpeek import cli
atexit.register(lambda: print("exit handler ran", flush=True))
class Late:
    def __del__(self):
        print("torn down", flush=True)
late = Late()  # freed only by a teardown of the interpreter
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
sys.argv = ["kpeek", "--version"]
cli.entry()
"""


@pytest.mark.parametrize("case", ["alone", "thread"])
def test_the_command_exits_as_python_would(case) -> None:
    """entry() leaves without tearing the interpreter down, but only once the
    output is out and the exit handlers have run; with another thread still
    running it exits as Python does, after the thread."""
    r = subprocess.run([sys.executable, "-c", _ENTRY_PROBE, case], capture_output=True,
                       text=True, timeout=30)
    expected = ["kpeek 0.1.0", "exit handler ran"]
    if case == "thread":
        expected[1:1] = ["thread done"]
        expected.append("torn down")
    assert (r.returncode, r.stdout.splitlines(), r.stderr) == (0, expected, "")


def test_global_option_before_the_verb_and_verb_help() -> None:
    parser = build_parser()
    args = parser.parse_args(["-c", "/nonexistent", "sym", "schedule"])
    assert args.verb == "sym" and args.core == "/nonexistent" and callable(args.func)
    r = subprocess.run([sys.executable, "-m", "kpeek", "ps", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--threads" in r.stdout
    r = subprocess.run([sys.executable, "-m", "kpeek", "nosuchverb"],
                       capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 2 and r.stderr.count("\n") == 1


# One verb in a fresh interpreter; then whether inspect (with tokenize, ast,
# dis) was imported, and what inspect answers afterwards.
_INSPECT_PROBE = """
import contextlib, io, json, sys
from kpeek.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
loaded = "tokenize" in sys.modules
import inspect
print(json.dumps([code, out.getvalue(), loaded, str(inspect.signature(lambda a, b=2: 0)),
                  inspect.isfunction(main), inspect.getmodule(main).__name__]))
"""


def test_verbs_start_without_importing_inspect(tmp_path) -> None:
    """Python 3.11's dataclasses imports inspect (6 ms of start-up) only for
    classes without a docstring: kpeek puts a stand-in there until inspect
    is used, and the output is the same as with the real module."""
    from capabilities import have_bpf

    log = tmp_path / "oops.log"
    log.write_text("BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
                   "Oops: 0000 [#1] PREEMPT SMP NOPTI\nRIP: 0010:pipe_read+0x2a/0x450\n"
                   "Call Trace:\n <TASK>\n vfs_read+0x1f0/0x2e0\n </TASK>\n")
    verbs = [["oops", str(log)], ["oops", "--json", str(log)], ["struct", "list_head"]]
    if have_bpf():
        verbs += [["ps", "-p", "1"], ["files", str(os.getpid())], ["sym", "schedule"]]
    for argv in verbs:
        probe = subprocess.run([sys.executable, "-c", _INSPECT_PROBE, *argv],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        code, out, loaded, signature, isfunction, module = json.loads(probe.stdout)
        assert code == 0 and signature == "(a, b=2)" and isfunction and module == "kpeek.cli"
        assert loaded is (sys.version_info >= (3, 12)), argv
        if argv[0] in ("oops", "struct"):  # the same lines with inspect imported first
            plain = subprocess.run(
                [sys.executable, "-c", "import inspect, sys; from kpeek.cli import main; "
                 "sys.exit(main(sys.argv[1:]))", *argv], capture_output=True, text=True)
            assert plain.stdout == out, argv
