"""Numbers that are not numbers, and empty arguments: one line on stderr and exit 2, for every verb
that takes one, before anything touches the kernel."""

from __future__ import annotations

import pytest

from kpeek.cli import main

BAD = [
    ["doctor", "--min-sleep", "nan"],
    ["doctor", "--min-sleep", "-1"],
    ["doctor", "--min-sleep", "inf"],
    ["ps", "--ns", "abc"],
    ["ps", "--ns", "0"],
    ["ps", "--ns", "pid:[abc]"],
    ["list", "-o", "0xffffffffffffffff", "0xffffffff81000000"],
    ["list", "-o", "-8", "0xffffffff81000000"],
    ["serve", "0"],
    ["serve", "-1"],
    ["serve", "99999999"],
    ["serve", "--port", "0"],
    ["serve", "--port", "-1"],
    ["serve", "--port", "99999999"],
    ["serve", "--interval", "nan"],
    ["serve", "--interval", "inf"],
    ["serve", "--interval", "0.01"],
    # An empty argument ("$PID" of an unset variable) never means "all of them"
    ["ps", ""],
    ["ps", "-p", ""],
    ["ps", "-p", " "],
    ["files", ""],
    ["files", "1", " "],
    ["files", "-p", ""],
    ["struct", ""],
    ["struct", " "],
    ["files", "-u", ""],
    ["ps", "-u", ",^"],
    ["files", "-c", ""],
    ["ps", "-c", ""],
    ["files", "+D", ""],
    ["ps", "-s", ""],
]


@pytest.mark.parametrize("argv", BAD, ids=" ".join)
def test_bad_number_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("kpeek: ")
    assert captured.out == ""


def test_ns_takes_the_form_readlink_shows(capsys):
    """`ps --ns pid:[N]` (readlink /proc/self/ns/pid) selects the same tasks as N.
    Read as JSON: the text table's notes (tasks that vanished under churn) are
    not rows."""
    import json
    import os

    link = os.readlink("/proc/self/ns/pid")
    inode = int(link[link.index("[") + 1 : -1])
    for form in (link, str(inode)):
        assert main(["ps", "--source", "procfs", "--json", "--ns", form]) == 0
        tasks = json.loads(capsys.readouterr().out)["tasks"]
        assert os.getpid() in {t["pid"] for t in tasks}
        assert {t["pidns"] for t in tasks} == {inode}
