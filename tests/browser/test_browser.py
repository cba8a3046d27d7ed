"""The course opened in real JupyterLab, in headless Chromium driven by Playwright.

`make lab` runs the same server. These tests check that the first chapter opens with a live kernel,
that the widget stack the interactive chapters use (ipywidgets + a plotly FigureWidget) renders
and reacts, and that chapter 02's routing explorer works end to end: the lesson runs in the
browser, a top-k slider moved with the keyboard changes the plotted load as the maths says (the
bars sum to T*K), and no widget fails to display. Screenshots go to build/screenshots/.

The browser is the system's Chromium (never a download). Where it or Playwright is missing, or
Chromium cannot start, the tests skip and say why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from jlab import (
    IDLE,
    ROOT,
    SCREENSHOTS,
    TIMEOUT_MS,
    _browser_missing,
    _free_port,
    _open,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_start_here_opens_with_a_live_kernel(lab, browser, tmp_path):
    page, errors = _open(browser, lab, "notebooks/00_start_here.ipynb", "start")
    # markdown renders asynchronously: wait until the chapter's title is on the page
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-MarkdownCell .jp-RenderedMarkdown')]"
        ".some(c => c.innerText.includes('Start here'))",
        timeout=TIMEOUT_MS,
    )
    page.screenshot(path=str(tmp_path / "start_here.png"))
    page.close()
    assert not errors, errors


def test_slider_changes_the_plotly_figure(lab, browser, tmp_path):
    page, errors = _open(browser, lab, "widgets.ipynb", "widgets")
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector(".widget-slider", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    read_y = "() => Array.from(document.querySelector('.js-plotly-plot').data[0].y)"
    assert page.evaluate(read_y) == [1, 1, 1]
    handle = page.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first
    handle.focus()
    for _ in range(3):
        handle.press("ArrowRight")
    page.wait_for_function(f"() => ({read_y})()[0] === 4", timeout=30_000)
    page.screenshot(path=str(tmp_path / "widgets.png"))
    assert (
        page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        ).count()
        == 0
    )
    page.close()
    assert not [e for e in errors if "widget" in e.lower()], errors


# the explorer's two plotly figures, in page order: the load bars first, then the heatmap
READ_PLOTS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
    bars: Array.from(p.data[0].y || []).map(Number),
    traces: p.data.map(t => Array.from(t.x || []).length),
    svg: (p.querySelector('.cartesianlayer') || {}).innerHTML || '',
}))"""


def test_routing_explorer_in_chapter_02(lab, browser):
    """Run the chapter 02 lesson, move the explorer's top-k slider from 2 to 3, watch the load."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # tall enough for the whole explorer (controls, load bars, heatmap) in one screenshot
    page, errors = _open(browser, lab, "notebooks/02_routing.ipynb", "routing", height=1500)
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    # not awaited: the command's promise settles only when every cell has run
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    # the last code cell prints the measurement table: the whole lesson has run
    try:
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
            ".some(o => o.innerText.includes('predicted'))",
            timeout=TIMEOUT_MS,
        )
    except Exception:
        page.screenshot(path=str(SCREENSHOTS / "02_routing_timeout.png"), full_page=True)
        raise
    page.locator(IDLE).first.wait_for(timeout=TIMEOUT_MS)
    slider = page.locator(".widget-slider").filter(has_text="top-k K").first
    slider.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")
    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".js-plotly-plot"))
    before = page.evaluate(READ_PLOTS)
    assert sum(before[0]["bars"]) == 256 * 2, before[0]["bars"]  # T*K slots with K = 2
    explorer.first.screenshot(path=str(SCREENSHOTS / "02_routing_explorer_before.png"))

    handle = slider.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")  # top-k 2 -> 3
    page.wait_for_function(
        f"() => ({READ_PLOTS})()[0].bars.reduce((a, b) => a + b, 0) === {256 * 3}",
        timeout=30_000,
    )
    after = page.evaluate(READ_PLOTS)
    assert after[0]["bars"] != before[0]["bars"]
    assert after[1]["traces"] != before[1]["traces"]  # third-choice markers appeared
    assert after[1]["svg"] != before[1]["svg"]  # and were drawn
    explorer.first.screenshot(path=str(SCREENSHOTS / "02_routing_explorer_after.png"))
    page.screenshot(path=str(SCREENSHOTS / "02_routing_page.png"))

    text = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in text
    assert (
        page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        ).count()
        == 0
    )
    widget_errors = [m for m in console if "widget" in m.lower() or "model" in m.lower()]
    page.close()
    assert not widget_errors, widget_errors
    assert not [e for e in errors if "widget" in e.lower()], errors


# --- the learner's path: `make lab` as a learner meets it ---------------------------------------

COURSE_DIRS = ("notebooks", "exercises", "solutions", "docs")
CURRENT_TAB = ".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current"
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def _course_state() -> tuple[list[str], dict[str, str]]:
    """The `git status` lines of the course's folders, and every course file's bytes, hashed."""
    import hashlib

    lines = [line for line in _git_status().splitlines() if line[3:].startswith(COURSE_DIRS)]
    files = {
        str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
        for d in COURSE_DIRS
        for p in sorted((ROOT / d).rglob("*"))
        if p.is_file()
    }
    return lines, files


@pytest.fixture(scope="module")
def course_lab(tmp_path_factory):
    """`python -m minimoe lab`, the command `make lab` runs, on a temporary workspace; yields
    (the URL it printed, the workspace)."""
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    if not (ROOT / ".git").exists():
        pytest.skip("the repository checks need a git checkout")
    workspace = tmp_path_factory.mktemp("course") / "workspace"
    out_path = workspace.parent / "lab.out"
    out, log = open(out_path, "w"), open(workspace.parent / "lab.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "minimoe", "lab", "--no-browser", "--workspace", str(workspace),
         f"--port={_free_port()}"],
        cwd=ROOT, stdout=out, stderr=log,
    )  # fmt: skip
    url = None
    for _ in range(240):
        printed = out_path.read_text()
        url = next((w for w in printed.split() if "token=" in w), None)
        if url or proc.poll() is not None:
            break
        time.sleep(0.5)
    if url is None:
        proc.kill()
        pytest.fail(
            "minimoe lab printed no URL:\n" + (workspace.parent / "lab.log").read_text()[-3000:]
        )
    yield url, workspace
    proc.terminate()
    proc.wait(timeout=30)
    out.close()
    log.close()


def _wait_for_notebook(page, title: str) -> None:
    page.wait_for_selector(f"{CURRENT_TAB}:has-text('{title}')", timeout=TIMEOUT_MS)
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=TIMEOUT_MS)
    page.locator(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=TIMEOUT_MS
    )
    time.sleep(2)  # the kernel's first messages (language info) arrive just after it is idle


def _is_dirty(page) -> bool:
    return page.locator(f"{CURRENT_TAB}.jp-mod-dirty").count() > 0


def _add_cell_run_and_save(page, cell, code: str, saved_file: Path, marker: str) -> None:
    """Below `cell`: a new code cell with `code`, run it, save with Ctrl+S, wait for the file."""
    cell.click()
    page.keyboard.press("Escape")  # command mode
    page.keyboard.press("b")  # a new cell below
    page.keyboard.press("Enter")  # edit it
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    # the cell has run when its prompt shows an execution count ([*] while it runs), and its
    # outputs arrive before that count does: save only then, or the file may miss them
    page.wait_for_function(
        """(marker) => [...document.querySelectorAll('.jp-CodeCell')].some(c =>
            c.innerText.includes(marker)
            && /\\[\\d+\\]/.test(c.querySelector('.jp-InputPrompt')?.innerText || ''))""",
        arg=marker,
        timeout=TIMEOUT_MS,
    )
    page.locator(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=TIMEOUT_MS
    )
    page.keyboard.press("Control+s")
    deadline = time.time() + 60
    while time.time() < deadline:
        if marker in saved_file.read_text() and not _is_dirty(page):
            return
        time.sleep(0.5)
    raise AssertionError(f"{saved_file} was not saved with {marker!r}")


def test_learners_path_from_make_lab_to_saved_work(course_lab, browser):
    """The printed URL lands on chapter 00, with no first-run pop-up and nothing unsaved; the
    exercises are in the file browser; saving a lesson and an exercise writes the workspace, never
    the repository; the saved lesson reopens without a widget error."""
    from minimoe.course.clean import check_clean
    from minimoe.course.lab import WIDGET_NOTE, WIDGET_VIEW

    url, workspace = course_lab
    assert "/lab/tree/notebooks/00_start_here.ipynb?token=" in url
    clean_before, before = _git_status() == "", _course_state()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)

    # landing: chapter 00, its kernel idle, not marked unsaved, no news pop-up
    _wait_for_notebook(page, "00_start_here.ipynb")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-RenderedMarkdown')]"
        ".some(c => c.innerText.includes('Start here'))",
        timeout=TIMEOUT_MS,
    )
    time.sleep(3)  # the news question, when on, appears a moment after the page
    page.screenshot(path=str(SCREENSHOTS / "lab_landing_chapter00.png"))
    assert not _is_dirty(page), "chapter 00 is marked unsaved as soon as it opens"
    body = page.locator("body").inner_text()
    assert "Jupyter news" not in body and page.locator(".jp-toast-message").count() == 0

    # edit and save the lesson: a widget, run, saved as a line of text
    lesson = workspace / "notebooks" / "00_start_here.ipynb"
    first_cell = page.locator(f"{NOTEBOOK} .jp-Cell").first
    code = "import ipywidgets as W; W.IntSlider(value=3, description='mine')  # my_lesson_note"
    _add_cell_run_and_save(page, first_cell, code, lesson, "my_lesson_note")
    saved = json.loads(lesson.read_text())
    outputs = [o for c in saved["cells"] for o in c.get("outputs", [])]
    assert any(WIDGET_NOTE in "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert not any(WIDGET_VIEW in o.get("data", {}) for o in outputs)

    # the file browser: up to the course's root, into exercises/, open problem set 01
    page.locator(".jp-BreadCrumbs-home").first.click()
    page.locator(".jp-DirListing-item:has-text('exercises')").first.dblclick()
    item = page.locator(".jp-DirListing-item:has-text('01_dense_to_experts.ipynb')").first
    item.wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(SCREENSHOTS / "lab_file_browser_exercises.png"))
    item.dblclick()
    _wait_for_notebook(page, "01_dense_to_experts.ipynb")
    assert not _is_dirty(page)

    exercise = workspace / "exercises" / "01_dense_to_experts.ipynb"
    first_cell = page.locator(f"{NOTEBOOK} .jp-Cell").first
    _add_cell_run_and_save(page, first_cell, "my_exercise_note = 1", exercise, "my_exercise_note")
    page.close()

    # the repository did not change (on a clean checkout, as in CI: `git status` stays empty; in a
    # working tree with edits in progress, the course's files are byte for byte as they were)
    assert _course_state() == before
    if clean_before:
        assert _git_status() == ""
    assert check_clean([ROOT / d for d in ("notebooks", "exercises", "solutions")]) == []

    # reopen the saved lesson in a new kernel (as after a restart, or another day): the old
    # kernel's widget models are gone. No widget error; the note is in the widget's place.
    base, token = url.split("/lab/")[0], url.split("token=")[1]
    for session in json.load(urllib.request.urlopen(f"{base}/api/sessions?token={token}")):
        request = f"{base}/api/sessions/{session['id']}?token={token}"
        urllib.request.urlopen(urllib.request.Request(request, method="DELETE"))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.goto(url.replace("/lab/tree/", "/lab/workspaces/reopen/tree/") + "&reset")
    _wait_for_notebook(page, "00_start_here.ipynb")
    page.wait_for_function(
        f"() => document.body.innerText.includes({json.dumps(WIDGET_NOTE)})", timeout=TIMEOUT_MS
    )
    page.screenshot(path=str(SCREENSHOTS / "lab_reopened_lesson.png"))
    time.sleep(2)  # a widget view that fails says so once the widget manager has restored
    outputs = "\n".join(page.locator(f"{NOTEBOOK} .jp-OutputArea-output").all_inner_texts())
    assert WIDGET_NOTE in outputs
    assert "Error displaying widget" not in outputs and "model not found" not in outputs
    assert not [m for m in console if "model not found" in m.lower()], console
    assert not _is_dirty(page)
    page.close()
    assert not [e for e in errors if "widget" in e.lower()], errors
