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

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "minimoe-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return (
            f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(`make test` does so when run as root)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f"Playwright is not installed ({error}): pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab")
    # a copy: JupyterLab rewrites a notebook's metadata when it opens it
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import ipywidgets as W, plotly.graph_objects as go\n"
            "fig = go.FigureWidget(go.Bar(x=['a', 'b', 'c'], y=[1, 1, 1]))\n"
            "slider = W.IntSlider(value=1, min=1, max=10, description='scale')\n"
            "slider.observe(lambda ch: fig.data[0].update(y=[ch['new']] * 3), names='value')\n"
            "W.VBox([slider, fig])"
        )
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, root / "widgets.ipynb")
    # render every cell (no virtual scrolling), so outputs far down the notebook are in the page
    settings = root / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    # no "get notified about Jupyter news?" toast over the screenshots
    apputils = settings.parent / "apputils-extension"
    apputils.mkdir()
    (apputils / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    port = _free_port()
    # the server's log goes to a file: an unread pipe fills up and blocks the server
    log = open(root / "jupyterlab.log", "wb")  # noqa: SIM115 (closed at teardown)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.ip=127.0.0.1", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        log.close()
        pytest.fail("JupyterLab did not start: " + (root / "jupyterlab.log").read_text()[-2000:])
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        except Exception as error:  # a broken install: say so instead of failing every test
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {str(error)[:500]}")
        yield b
        b.close()


TIMEOUT_MS = 180_000  # generous: CI runs these beside other work on two cores
IDLE = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']"


def _open(browser, lab, path, workspace, height=900):
    """Open a notebook in a workspace of its own, so JupyterLab restores nothing else."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{lab}/lab/workspaces/{workspace}/tree/{path}?reset&token={TOKEN}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=TIMEOUT_MS)
    page.wait_for_function("() => window.jupyterapp", timeout=TIMEOUT_MS)
    page.locator(IDLE).first.wait_for(timeout=TIMEOUT_MS)  # the kernel started and is idle
    # the indicator can read idle before the session has its kernel; running cells then would
    # open a "Select Kernel" dialog, so wait for a connected, idle kernel
    page.wait_for_function(KERNEL_READY, timeout=TIMEOUT_MS)
    return page, errors


KERNEL_READY = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session
        && w.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected'
        && w.sessionContext.kernelDisplayStatus === 'idle';
}"""


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
