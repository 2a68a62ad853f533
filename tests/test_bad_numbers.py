"""Numbers that are not numbers: one line on stderr and exit 2, for every verb
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
]


@pytest.mark.parametrize("argv", BAD, ids=" ".join)
def test_bad_number_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("kpeek: ")
    assert captured.out == ""


def test_ns_takes_the_form_readlink_shows(capsys):
    """`ps --ns pid:[N]` (readlink /proc/self/ns/pid) selects the same tasks as N."""
    import os

    link = os.readlink("/proc/self/ns/pid")
    inode = link[link.index("[") + 1:-1]
    assert main(["ps", "--source", "procfs", "--ns", link]) == 0
    by_link = capsys.readouterr().out
    assert main(["ps", "--source", "procfs", "--ns", inode]) == 0
    by_number = capsys.readouterr().out
    for out in (by_link, by_number):  # the machine churns: compare what each holds
        lines = out.splitlines()
        header = lines[0].split()
        pid_col, ns_col = header.index("PID"), header.index("PIDNS")
        rows = [line.split() for line in lines[1:] if len(line.split()) > ns_col]
        assert str(os.getpid()) in {r[pid_col] for r in rows}
        assert {r[ns_col] for r in rows if r[pid_col].isdigit()} == {inode}
