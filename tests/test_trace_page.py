"""The trace page in headless Chromium: stepping with buttons and keys, names as text."""

from __future__ import annotations

import pytest

from browser import Browser
from capabilities import require
from kpeek.cli import main

POSITION = "document.getElementById('position').textContent"
SYSCALL = "document.getElementById('syscall').textContent"
CHANGES = "Array.from(document.querySelectorAll('#changes li')).map(li => li.textContent)"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A trace of `cmd > file 2>&1`-style redirection with a hostile file name."""
    require("graphviz", "chromium")
    tmp = tmp_path_factory.mktemp("trace-page")
    out = tmp / "report.html"
    evil = tmp / "<img src=x onerror=alert(1)>.txt"
    script = f'exec 3>"{evil}"; (echo hi >&3); exec 3>&-'
    assert main(["trace", "--html", str(out), "--", "sh", "-c", script]) == 0
    with Browser() as browser:
        browser.open(out.as_uri())
        yield browser, evil


@pytest.mark.timeout(120)
def test_page_steps_with_keys_and_buttons(page):
    browser, _ = page
    # numbered from 0 as in the text listing: step 0 is the program before execve
    last = int(browser.evaluate(POSITION).split(" of ")[1])
    assert last >= 5
    assert browser.evaluate(POSITION) == f"step 0 of {last}"
    assert "kpeek starts sh" in browser.evaluate(SYSCALL)
    browser.press("ArrowRight")
    assert browser.evaluate(POSITION) == f"step 1 of {last}"
    assert "execve(" in browser.evaluate(SYSCALL)
    assert any("now runs sh" in c for c in browser.evaluate(CHANGES))
    browser.press("End")
    assert browser.evaluate(POSITION) == f"step {last} of {last}"
    assert "exit" in browser.evaluate(SYSCALL)
    # nothing left in the last diagram: every process is gone
    assert browser.evaluate("document.querySelectorAll('#diagram svg g.process').length") == 0
    browser.press("ArrowLeft")
    assert browser.evaluate(POSITION) == f"step {last - 1} of {last}"
    browser.evaluate("document.getElementById('prev').click()")
    assert browser.evaluate(POSITION) == f"step {last - 2} of {last}"
    browser.press("Home")
    assert browser.evaluate("document.getElementById('prev').disabled") is True
    browser.evaluate("document.getElementById('next').click()")
    assert browser.evaluate(POSITION) == f"step 1 of {last}"


@pytest.mark.timeout(120)
def test_fork_step_highlights_the_new_process_and_shows_shared_file(page):
    browser, evil = page
    browser.press("Home")
    for _ in range(40):
        if browser.evaluate(SYSCALL).split("] ", 1)[1].startswith(("clone", "fork", "vfork")):
            break
        browser.press("ArrowRight")
    else:
        pytest.fail("no fork step")
    changes = browser.evaluate(CHANGES)
    assert any(c.startswith("new process") for c in changes)
    # two process boxes, and one open-file entry for the file with two arrows in
    assert browser.evaluate("document.querySelectorAll('#diagram svg g.process').length") == 2
    highlighted = browser.evaluate(
        "Array.from(document.querySelectorAll('#diagram svg g.process polygon'))"
        ".filter(p => p.getAttribute('fill') === '#ffe680').length"
    )
    assert highlighted >= 1
    texts = browser.evaluate(
        "Array.from(document.querySelectorAll('#diagram svg text')).map(t => t.textContent)"
    )
    assert any(f"{evil.name}" in t or "onerror" in t for t in texts)
    assert any(t == "2 fds here" for t in texts)


@pytest.mark.timeout(120)
def test_hostile_file_name_is_text_not_markup(page):
    browser, evil = page
    browser.press("Home")
    browser.press("ArrowRight")
    browser.press("ArrowRight")  # the open of the evil file
    assert evil.name in browser.evaluate(SYSCALL)
    assert browser.evaluate("document.querySelectorAll('img, iframe, object').length") == 0
    assert browser.evaluate("document.querySelectorAll('script').length") == 2  # data + stepper
    # self-contained: the page fetched nothing at all
    assert browser.evaluate("performance.getEntriesByType('resource').length") == 0
