"""`python -m minimoe lab`: the course in JupyterLab, the learner's work in a workspace of its own.

    python -m minimoe lab                          # what `make lab` runs
    python -m minimoe lab --reset exercises/01_dense_to_experts.ipynb
    python -m minimoe lab --prepare-only           # fill the workspace, print the command, exit

The workspace (`workspace/`, git-ignored: the course's notebooks are never served themselves),
how it is filled from the course, kept in step with it, and reset, and its JupyterLab settings
are `minimoe.course.workspace`'s.

Saving. A widget (the routing explorer, a progress bar) is drawn by the browser from a model
that lives in the running kernel. Saved without its state, a reopened notebook shows "Error
displaying widget: model not found"; saved with it, the notebook grows by megabytes and shows a
frozen copy that no longer answers its controls. The server started here keeps every output a
learner may want to read again (printed results, check messages, static figures) and replaces
each widget view by one line of text saying to run the cell again (`strip_widget_views`, a
pre-save hook).

The printed URL opens chapter 00 directly (`/lab/tree/notebooks/00_start_here.ipynb?token=...`);
on a desktop it is also opened in the default browser.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from minimoe.course.workspace import (
    FIRST_PAGE,
    SETTINGS_DIR,
    WORKSPACES_DIR,
    SyncReport,
    course_root,
    reset,
    sync,
    write_settings,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[an interactive widget was here: run this cell again to bring it back]"


# --- saving -------------------------------------------------------------------------------------


def strip_widget_views(model: dict, path: str = "", **kwargs) -> None:
    """Pre-save hook of the course's server: every widget view output becomes one line of text.

    The other outputs (text, errors, images, plotly figures) are saved as they are. The saved
    widget state, if some other setting wrote it, is dropped with the views it belonged to.
    """
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    nb = model["content"]
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            data = output.get("data")
            if isinstance(data, dict) and WIDGET_VIEW in data:
                output["data"] = {"text/plain": WIDGET_NOTE}
                output["metadata"] = {}


# --- the server ---------------------------------------------------------------------------------


def free_port(start: int = 8888, tries: int = 100) -> int:
    """The first port from `start` on that nothing listens on."""
    for port in range(start, start + tries):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{start + tries - 1}")


@dataclass
class Server:
    """How to start the course's JupyterLab: the command, its environment, the URL to open."""

    command: list[str]
    env: dict[str, str]
    url: str
    status_url: str


def server(workspace: Path, port: int, token: str, ip: str = "127.0.0.1") -> Server:
    """The JupyterLab command for `workspace` (already filled). Configuration is on the command
    line and in the workspace's settings folder; nothing is read from or written to ~/.jupyter's
    settings for it."""
    workspace = Path(workspace).resolve()
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        f"--ServerApp.root_dir={workspace}",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ContentsManager.pre_save_hook=minimoe.course.lab.strip_widget_views",
        f"--LabApp.default_url=/lab/tree/{FIRST_PAGE}",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(workspace / SETTINGS_DIR),
        "JUPYTERLAB_WORKSPACES_DIR": str(workspace / WORKSPACES_DIR),
        "JUPYTER_PREFER_ENV_PATH": "1",  # this environment's kernel, not a user-wide python3
    }
    host = "localhost" if ip in ("127.0.0.1", "localhost") else ip
    base = f"http://{host}:{port}"
    return Server(
        command=command,
        env=env,
        url=f"{base}/lab/tree/{FIRST_PAGE}?token={token}",
        status_url=f"{base}/api/status?token={token}",
    )


def prepare(course: Path, workspace: Path) -> SyncReport:
    """Fill the workspace and write its settings; what `make lab` does before starting."""
    report = sync(course, workspace)
    write_settings(workspace)
    return report


def wait_until_up(proc: subprocess.Popen, status_url: str, timeout: float = 120) -> bool:
    """Poll the server's status API until it answers; False if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(status_url, timeout=2)
            return True
        except OSError:
            time.sleep(0.3)
    return False


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="where your work lives (default: workspace/ in the course's checkout)",
    )
    parser.add_argument(
        "--course", type=Path, default=None, help="the course checkout (default: this one)"
    )
    parser.add_argument("--port", type=int, default=None, help="default: the first free from 8888")
    parser.add_argument("--no-browser", action="store_true", help="print the URL, open nothing")
    parser.add_argument(
        "--reset",
        metavar="PATH",
        action="append",
        help="put the shipped version of PATH (e.g. exercises/01_dense_to_experts.ipynb) back; "
        "your copy moves to workspace/backups/. Repeatable; does not start JupyterLab",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="fill the workspace and write the settings, print the server command, exit",
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    course = (args.course or course_root()).resolve()
    workspace = (args.workspace or course / "workspace").resolve()
    try:
        if args.reset:
            for rel in args.reset:
                backup = reset(course, workspace, rel)
                saved = f" (your copy is now {backup.relative_to(workspace)})" if backup else ""
                print(f"reset {rel} to the shipped version{saved}")
            print("If it is open in JupyterLab, use File > Reload Notebook from Disk.")
            return 0
        report = prepare(course, workspace)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    for line in report.lines():
        print(line)
    token = secrets.token_hex(24)
    srv = server(workspace, args.port or free_port(), token)
    if args.prepare_only:
        print(" ".join(srv.command))
        return 0
    print(f"starting JupyterLab on {workspace} (your work is saved there, never in the course)")
    proc = subprocess.Popen(srv.command, env=srv.env)
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if not wait_until_up(proc, srv.status_url):
            print("JupyterLab did not start; its messages are above.", file=sys.stderr)
            return 1
        print("\n    The course, chapter 00:\n")
        print(f"    {srv.url}\n")
        print("    Stop the server with Ctrl+C.\n", flush=True)
        if not args.no_browser and _has_display():
            webbrowser.open(srv.url)
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl+C: no "shut down? (y/n)" question, the server just stops
        return 0
    finally:
        stop(proc)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop the server (and with it its kernels); killed if it takes longer than `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
