"""`python -m minimoe lab`: the course in JupyterLab, the learner's work in a workspace of its own.

    python -m minimoe lab                          # what `make lab` runs
    python -m minimoe lab --reset exercises/01_dense_to_experts.ipynb
    python -m minimoe lab --prepare-only           # fill the workspace, print the command, exit

Why a workspace. The course's notebooks are tracked files: a learner who saves a lesson with its
outputs would change them, `git status` would show it, the clean-notebooks check of `make test`
would fail, and `git pull` of a newer course would conflict. So JupyterLab never sees them. It
serves `workspace/` (git-ignored), which this command fills from the course:

- a file the workspace lacks is copied in (the first run copies everything; a chapter added by
  `git pull` appears on the next run);
- a file the learner has changed is never overwritten. When the course has a newer version of it,
  the command says so and names the `--reset` that takes it;
- a file the learner has not changed follows the course (the copy made last time is recorded in
  `workspace/.minimoe/shipped.json`, by the notebook's cells, so outputs and metadata added by
  running it do not count as a change);
- `--reset PATH` puts the shipped version back, after moving the learner's copy to
  `workspace/backups/`.

What is copied: `notebooks/`, `exercises/`, `solutions/` and `docs/`, so that a lesson's relative
link `../docs/conventions.md` opens the reference page beside it.

Saving. A widget (the routing explorer, a progress bar) is drawn by the browser from a model
that lives in the running kernel. Saved without its state, a reopened notebook shows "Error
displaying widget: model not found"; saved with it, the notebook grows by megabytes and shows a
frozen copy that no longer answers its controls. The server started here keeps every output a
learner may want to read again (printed results, check messages, static figures) and replaces
each widget view by one line of text saying to run the cell again (`strip_widget_views`, a
pre-save hook).

Why a notebook looked unsaved as soon as it opened: the course stores notebooks without outputs
and with minimal metadata (`language_info: {"name": "python"}`). When the kernel starts,
JupyterLab writes the kernel's full `language_info` (version, codemirror mode, ...) into the
notebook's metadata, and that edit marks it dirty. The workspace copies carry the metadata the
environment's kernel reports (`kernel_metadata`), so opening changes nothing.

Settings. JupyterLab's first-run prompts (the "get notified about official Jupyter news?" pop-up,
the update check) are switched off in a settings folder of the workspace
(`workspace/.jupyter/lab/user-settings`, passed as JUPYTERLAB_SETTINGS_DIR to this server only).
The user's own Jupyter settings and configuration (~/.jupyter) are neither read for these
settings nor written.

The printed URL opens chapter 00 directly (`/lab/tree/notebooks/00_start_here.ipynb?token=...`);
on a desktop it is also opened in the default browser.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

COURSE_DIRS = {
    "notebooks": "*.ipynb",
    "exercises": "*.ipynb",
    "solutions": "*.ipynb",
    "docs": "*.md",
}
FIRST_PAGE = "notebooks/00_start_here.ipynb"
MANIFEST = Path(".minimoe") / "shipped.json"
BACKUPS = "backups"
SETTINGS_DIR = Path(".jupyter") / "lab" / "user-settings"
WORKSPACES_DIR = Path(".jupyter") / "lab" / "workspaces"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[an interactive widget was here: run this cell again to bring it back]"

# plugin id -> settings. Only what a first run would otherwise interrupt the learner with.
SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": False},
}


def course_root() -> Path:
    """The checkout this package was imported from (its notebooks/ beside minimoe/)."""
    return Path(__file__).resolve().parents[2]


# --- the workspace ------------------------------------------------------------------------------


def fingerprint(path: Path) -> str:
    """What counts as the learner's change: a notebook's cells (type and source), not its outputs,
    execution counts or metadata; any other file's bytes."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        content = json.dumps(
            [
                (
                    c["cell_type"],
                    "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
                )
                for c in cells
            ]
        ).encode()
    else:
        content = path.read_bytes()
    return hashlib.sha256(content).hexdigest()


def kernel_metadata() -> dict:
    """The `kernelspec` and `language_info` this environment's Python kernel reports, which
    JupyterLab would otherwise write into each notebook when its kernel starts."""
    try:
        from ipykernel.ipkernel import IPythonKernel
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
        language_info = copy.deepcopy(IPythonKernel.language_info)
    except Exception:  # no Jupyter here (a bare library install): leave the metadata alone
        return {}
    language_info["version"] = ".".join(map(str, sys.version_info[:3]))
    return {
        "kernelspec": {
            "display_name": spec.display_name,
            "language": spec.language,
            "name": "python3",
        },
        "language_info": language_info,
    }


def copy_course_file(src: Path, dst: Path, metadata: dict) -> None:
    """Copy one course file into the workspace; a notebook gets this kernel's metadata."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix != ".ipynb" or not metadata:
        shutil.copyfile(src, dst)
        return
    nb = json.loads(src.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {}).update(copy.deepcopy(metadata))
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def course_files(course: Path) -> list[str]:
    """The workspace-relative paths of every file the course ships into the workspace."""
    files = []
    for folder, pattern in COURSE_DIRS.items():
        files += sorted(p.relative_to(course).as_posix() for p in (course / folder).glob(pattern))
    return files


@dataclass
class SyncReport:
    """What `sync` did, path by path (workspace-relative)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    kept: list[str] = field(
        default_factory=list
    )  # the learner's version; the course has a newer one

    def lines(self) -> list[str]:
        out = []
        if self.added:
            out.append(f"copied {len(self.added)} new file(s) from the course into the workspace")
        if self.updated:
            out.append(
                f"updated {len(self.updated)} file(s) you had not changed: "
                + ", ".join(self.updated)
            )
        for rel in self.kept:
            out.append(
                f"kept your {rel}; the course has a newer version "
                f"(to take it: python -m minimoe lab --reset {rel})"
            )
        return out


def _check_course(course: Path) -> None:
    if not (course / FIRST_PAGE).is_file():
        raise FileNotFoundError(
            f"{course / FIRST_PAGE} not found: run this from a checkout of the course "
            "(or pass --course DIR)"
        )


def _check_workspace(course: Path, workspace: Path) -> None:
    course, workspace = course.resolve(), workspace.resolve()
    for folder in COURSE_DIRS:
        if workspace == course / folder or (course / folder) in workspace.parents:
            raise ValueError(f"the workspace {workspace} must not be inside the course's {folder}/")
    if workspace == course:
        raise ValueError("the workspace must be a folder of its own, not the course itself")


def _read_manifest(workspace: Path) -> dict[str, str]:
    path = workspace / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_manifest(workspace: Path, manifest: dict[str, str]) -> None:
    path = workspace / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def sync(course: Path, workspace: Path) -> SyncReport:
    """Fill `workspace` from the course; never overwrite a file the learner changed."""
    course, workspace = Path(course), Path(workspace)
    _check_course(course)
    _check_workspace(course, workspace)
    manifest = _read_manifest(workspace)
    metadata = kernel_metadata()
    report = SyncReport()
    for rel in course_files(course):
        src, dst = course / rel, workspace / rel
        shipped = fingerprint(src)
        if not dst.exists():
            copy_course_file(src, dst, metadata)
            report.added.append(rel)
        else:
            mine = fingerprint(dst)
            if mine == shipped:
                pass
            elif manifest.get(rel) == mine:  # the learner left it as copied; the course moved on
                copy_course_file(src, dst, metadata)
                report.updated.append(rel)
            else:  # the learner's work
                if manifest.get(rel) != shipped:
                    report.kept.append(rel)
                continue  # the manifest keeps the version their copy came from
        manifest[rel] = shipped
    _write_manifest(workspace, manifest)
    return report


def reset(course: Path, workspace: Path, rel: str) -> Path | None:
    """Put the shipped version of `rel` (e.g. "exercises/01_dense_to_experts.ipynb") back into the
    workspace. The learner's copy is moved to workspace/backups/ first; returns where (or None)."""
    course, workspace = Path(course), Path(workspace)
    _check_course(course)
    _check_workspace(course, workspace)
    rel = Path(rel).as_posix()
    if rel.startswith("workspace/"):  # typed from the repository root
        rel = rel[len("workspace/") :]
    if rel not in course_files(course):
        raise ValueError(
            f"{rel!r} is not a file the course ships; give a path such as "
            "exercises/01_dense_to_experts.ipynb or notebooks/02_routing.ipynb"
        )
    dst = workspace / rel
    backup = None
    if dst.exists():
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = (
            workspace / BACKUPS / Path(rel).parent / f"{Path(rel).stem}.{stamp}{Path(rel).suffix}"
        )
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dst, backup)
    copy_course_file(course / rel, dst, kernel_metadata())
    manifest = _read_manifest(workspace)
    manifest[rel] = fingerprint(course / rel)
    _write_manifest(workspace, manifest)
    return backup


def write_settings(workspace: Path) -> Path:
    """The course's JupyterLab settings, in the workspace's own settings folder. A settings file
    the learner already has (changed in Settings) is left as it is. Returns the folder."""
    folder = Path(workspace) / SETTINGS_DIR
    for plugin, values in SETTINGS.items():
        package, name = plugin.rsplit(":", 1)
        path = folder / package / f"{name}.jupyterlab-settings"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    return folder


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
