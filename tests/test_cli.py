"""The verb table: every verb listed in --help, only the chosen one imported."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

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
