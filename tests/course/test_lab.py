"""`python -m minimoe lab`: the workspace it fills, the settings it writes, the server it starts.

The browser side (landing on chapter 00, saving, reopening) is in tests/browser/test_browser.py; these
tests check the rules the workspace keeps, on a small course made in a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minimoe.course import lab, workspace
from minimoe.course.clean import check_clean

ROOT = Path(__file__).resolve().parents[2]


def _notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["language_info"] = {"name": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def course(tmp_path: Path) -> Path:
    root = tmp_path / "course"
    _notebook(root / workspace.FIRST_PAGE, "print('start')")
    _notebook(root / "exercises" / "00_start_here.ipynb", "x = 1")
    _notebook(root / "solutions" / "00_start_here.ipynb", "x = 2")
    (root / "docs").mkdir()
    (root / "docs" / "conventions.md").write_text("# Conventions\n")
    return root


def _run_and_save(path: Path, source: str | None = None, output: str = "out") -> None:
    """What JupyterLab does to a notebook a learner runs (and, with `source`, edits) and saves."""
    nb = json.loads(path.read_text())
    cell = nb["cells"][0]
    if source is not None:
        cell["source"] = source
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": output}]
    cell["execution_count"] = 1
    nb["metadata"]["widgets"] = {"state": {}}
    path.write_text(json.dumps(nb))


def test_first_run_copies_the_whole_course(course, tmp_path):
    ws = tmp_path / "ws"
    report = workspace.sync(course, ws)
    expected = [
        "notebooks/00_start_here.ipynb",
        "exercises/00_start_here.ipynb",
        "solutions/00_start_here.ipynb",
        "docs/conventions.md",
    ]
    assert sorted(report.added) == sorted(expected)
    for rel in expected:
        assert workspace.fingerprint(ws / rel) == workspace.fingerprint(course / rel)
    assert workspace.sync(course, ws).added == []  # a second run has nothing to do


def test_copies_carry_the_kernel_metadata_so_opening_changes_nothing(course, tmp_path):
    ws = tmp_path / "ws"
    workspace.sync(course, ws)
    meta = json.loads((ws / workspace.FIRST_PAGE).read_text())["metadata"]
    info = meta["language_info"]
    assert info["name"] == "python" and info["version"] == ".".join(map(str, sys.version_info[:3]))
    assert "codemirror_mode" in info and meta["kernelspec"]["name"] == "python3"
    from ipykernel.ipkernel import IPythonKernel

    assert {k: v for k, v in info.items() if k != "version"} == {
        k: v for k, v in IPythonKernel.language_info.items() if k != "version"
    }


def test_the_learners_work_is_never_overwritten(course, tmp_path):
    ws = tmp_path / "ws"
    workspace.sync(course, ws)
    mine = ws / "exercises" / "00_start_here.ipynb"
    _run_and_save(mine, source="x = 'my answer'")
    _notebook(course / "exercises" / "00_start_here.ipynb", "x = 1  # a newer course")
    report = workspace.sync(course, ws)
    assert report.kept == ["exercises/00_start_here.ipynb"] and report.updated == []
    assert "my answer" in mine.read_text()
    assert any("--reset exercises/00_start_here.ipynb" in line for line in report.lines())
    assert workspace.sync(course, ws).kept == [
        "exercises/00_start_here.ipynb"
    ]  # said again next time


def test_unchanged_files_follow_the_course_and_new_chapters_appear(course, tmp_path):
    ws = tmp_path / "ws"
    workspace.sync(course, ws)
    lesson = ws / workspace.FIRST_PAGE
    _run_and_save(lesson)  # run and saved, but not edited: outputs are not the learner's change
    _notebook(course / workspace.FIRST_PAGE, "print('a clearer start')")
    _notebook(course / "notebooks" / "01_dense_to_experts.ipynb", "print('new chapter')")
    report = workspace.sync(course, ws)
    assert report.updated == [workspace.FIRST_PAGE]
    assert report.added == ["notebooks/01_dense_to_experts.ipynb"]
    assert "a clearer start" in lesson.read_text()
    assert (ws / "notebooks" / "01_dense_to_experts.ipynb").exists()


def test_reset_restores_the_shipped_version_and_keeps_a_backup(course, tmp_path):
    ws = tmp_path / "ws"
    workspace.sync(course, ws)
    mine = ws / "exercises" / "00_start_here.ipynb"
    _run_and_save(mine, source="x = 'my answer'")
    backup = workspace.reset(course, ws, "exercises/00_start_here.ipynb")
    assert backup is not None and backup.parent == ws / "backups" / "exercises"
    assert "my answer" in backup.read_text()
    assert workspace.fingerprint(mine) == workspace.fingerprint(
        course / "exercises" / "00_start_here.ipynb"
    )
    assert workspace.sync(course, ws).kept == []
    with pytest.raises(ValueError, match="not a file the course ships"):
        workspace.reset(course, ws, "exercises/99_nothing.ipynb")


def test_bad_workspace_or_course_is_a_clear_error(course, tmp_path):
    with pytest.raises(ValueError, match="must not be inside the course's notebooks/"):
        workspace.sync(course, course / "notebooks" / "mine")
    with pytest.raises(ValueError, match="folder of its own"):
        workspace.sync(course, course)
    with pytest.raises(FileNotFoundError, match="00_start_here.ipynb not found"):
        workspace.sync(tmp_path / "empty", tmp_path / "ws")


def test_settings_switch_off_the_first_run_prompts_and_keep_the_learners(tmp_path):
    folder = workspace.write_settings(tmp_path)
    news = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    assert json.loads(news.read_text()) == {"fetchNews": "false", "checkForUpdates": False}
    news.write_text('{"fetchNews": "true"}')  # changed by the learner in Settings
    workspace.write_settings(tmp_path)
    assert news.read_text() == '{"fetchNews": "true"}'


def test_server_uses_the_workspace_and_only_its_own_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    srv = lab.server(tmp_path / "ws", 8899, "abc")
    assert srv.url == f"http://localhost:8899/lab/tree/{workspace.FIRST_PAGE}?token=abc"
    assert f"--ServerApp.root_dir={(tmp_path / 'ws').resolve()}" in srv.command
    assert "--ContentsManager.pre_save_hook=minimoe.course.lab.strip_widget_views" in srv.command
    assert srv.env["JUPYTERLAB_SETTINGS_DIR"].startswith(str((tmp_path / "ws").resolve()))
    assert srv.env["JUPYTERLAB_WORKSPACES_DIR"].startswith(str((tmp_path / "ws").resolve()))
    assert srv.env.get("JUPYTER_CONFIG_DIR") == os.environ.get("JUPYTER_CONFIG_DIR")
    assert not any(str(tmp_path / "home") in arg for arg in srv.command)


def test_saving_replaces_widget_views_and_keeps_the_other_outputs():
    widget = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("slider")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="✓ passed\n"),
        nbformat.v4.new_output(
            "display_data",
            data={lab.WIDGET_VIEW: widget, "text/plain": "IntSlider(value=1)"},
        ),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"}),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    model = {"type": "notebook", "content": json.loads(nbformat.writes(nb))}
    lab.strip_widget_views(model=model, path="x.ipynb", contents_manager=None)
    outputs = model["content"]["cells"][0]["outputs"]
    assert "".join(outputs[0]["text"]) == "✓ passed\n"
    assert outputs[2]["data"] == {"image/png": "iVBOR"}
    assert outputs[1]["data"] == {"text/plain": lab.WIDGET_NOTE}
    assert "widgets" not in model["content"]["metadata"]
    nbformat.validate(nbformat.from_dict(model["content"]))
    lab.strip_widget_views(model={"type": "file", "content": "text"}, path="a.txt")  # untouched


def test_the_default_workspace_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = "workspace/exercises/01_dense_to_experts.ipynb"
    done = subprocess.run(
        ["git", "check-ignore", "-q", probe], cwd=ROOT, capture_output=True, check=False
    )
    assert done.returncode == 0, f"{probe} is not git-ignored"


def test_prepare_only_from_the_command_line(tmp_path):
    ws = tmp_path / "ws"
    done = subprocess.run(
        [sys.executable, "-m", "minimoe", "lab", "--workspace", str(ws), "--prepare-only"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "copied" in done.stdout and "jupyterlab" in done.stdout
    assert (ws / workspace.FIRST_PAGE).exists() and (ws / "exercises").is_dir()
    assert check_clean([ROOT / "notebooks", ROOT / "exercises", ROOT / "solutions"]) == []


@pytest.mark.slow
def test_the_command_prints_a_working_url_and_stops_its_server(tmp_path):
    """The real command: it prints chapter 00's URL with the token, the server answers there, and
    stopping the command stops the server (no JupyterLab is left running)."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.txt"
    with open(out, "w") as stdout, open(tmp_path / "log.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minimoe", "lab", "--no-browser", f"--port={port}",
             "--workspace", str(tmp_path / "ws")],
            cwd=ROOT, stdout=stdout, stderr=stderr,
        )  # fmt: skip
        try:
            url = None
            for _ in range(240):
                url = next((w for w in out.read_text().split() if "token=" in w), None)
                if url or proc.poll() is not None:
                    break
                time.sleep(0.5)
            assert url, (tmp_path / "log.txt").read_text()[-2000:]
            assert url.startswith(f"http://localhost:{port}/lab/tree/{workspace.FIRST_PAGE}?token=")
            token = url.split("token=")[1]
            page = urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/contents/{workspace.FIRST_PAGE}?token={token}",
                timeout=10,
            )
            assert json.load(page)["type"] == "notebook"
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    for _ in range(60):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=1)
        except OSError:
            return
        time.sleep(0.5)
    pytest.fail("the server kept running after the command stopped")


@pytest.mark.slow
def test_the_grader_grades_notebooks_from_the_workspace(tmp_path):
    """The instructor's grader on a learner's workspace copy: the shipped warm-up scores 0, the
    same copy with the warm-up solved (and run, with the kernel metadata it carries) scores 1."""
    ws = tmp_path / "ws"
    workspace.sync(ROOT, ws)
    solved = ws / "exercises" / "00_start_here.ipynb"
    answer = next(
        c
        for c in json.loads((ROOT / "solutions" / "00_start_here.ipynb").read_text())["cells"]
        if "answer" in c["metadata"].get("tags", [])
    )
    nb = json.loads(solved.read_text())
    for cell in nb["cells"]:
        if "answer" in cell["metadata"].get("tags", []):
            cell["source"] = answer["source"]
    (ws / "submitted").mkdir()
    shipped = ws / "submitted" / "00_start_here.ipynb"
    shipped.write_bytes(solved.read_bytes())
    solved.write_text(json.dumps(nb))
    report = tmp_path / "grades.json"
    done = subprocess.run(
        [sys.executable, "-m", "minimoe", "grade", str(solved), str(shipped),
         "--solutions", str(ROOT / "solutions"), "--json", str(report)],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    rows = {Path(r["notebook"]).parent.name: r for r in json.loads(report.read_text())}
    assert rows["exercises"]["passed"] and rows["exercises"]["points"] == 1, done.stdout
    assert not rows["submitted"]["passed"] and rows["submitted"]["points"] == 0, done.stdout
