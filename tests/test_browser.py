"""The course opened in real JupyterLab, in headless Chromium driven by Playwright.

`make lab` runs the same server. These tests check that the first chapter opens with a live kernel,
and that the widget stack the interactive chapters use (ipywidgets + a plotly FigureWidget) renders
and reacts: a slider is moved and the figure's data changes.
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does this)")
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
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.ip=127.0.0.1", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
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
        pytest.fail("JupyterLab did not start: " + proc.stderr.read().decode()[-2000:])
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


TIMEOUT_MS = 180_000  # generous: CI runs these beside other work on two cores
IDLE = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']"


def _open(browser, lab, path, workspace):
    """Open a notebook in a workspace of its own, so JupyterLab restores nothing else."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{lab}/lab/workspaces/{workspace}/tree/{path}?reset&token={TOKEN}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=TIMEOUT_MS)
    page.wait_for_function("() => window.jupyterapp", timeout=TIMEOUT_MS)
    page.locator(IDLE).first.wait_for(timeout=TIMEOUT_MS)  # the kernel started and is idle
    return page, errors


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
