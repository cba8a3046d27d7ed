"""What every browser test shares: a JupyterLab server on the course's notebooks (`lab`), the
system's Chromium driven by Playwright (`browser`), and `open_notebook` (a notebook opened in a
workspace of its own, with a connected, idle kernel). `conftest.py` makes the two fixtures
available to every test file here; helpers are imported from this module (`from jlab import ...`).

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

ROOT = Path(__file__).resolve().parents[2]
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


def open_notebook(browser, lab, path, workspace, height=900):
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


_open = open_notebook  # the name the first tests used
