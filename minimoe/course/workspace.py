"""The learner's workspace of `make lab`: filled from the course, kept in step with it, reset.

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

Why a notebook looked unsaved as soon as it opened: the course stores notebooks without outputs
and with minimal metadata (`language_info: {"name": "python"}`). When the kernel starts,
JupyterLab writes the kernel's full `language_info` (version, codemirror mode, ...) into the
notebook's metadata, and that edit marks it dirty. The workspace copies carry the metadata the
environment's kernel reports (`kernel_metadata`), so opening changes nothing.

Settings. JupyterLab's first-run prompts (the "get notified about official Jupyter news?" pop-up,
the update check) are switched off in a settings folder of the workspace
(`workspace/.jupyter/lab/user-settings`, passed as JUPYTERLAB_SETTINGS_DIR to the course's server only, `minimoe.course.lab`).
The user's own Jupyter settings and configuration (~/.jupyter) are neither read for these
settings nor written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
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
