"""The repository's conftest.py under nbval: shipped exercises must fail exactly at their checks.

Each test runs pytest in a subprocess, in a scratch folder holding a copy of conftest.py and
notebooks made from the fixture chapter, with the options of `make test`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minimoe.course.notebooks import exercise_notebook, has_tag

ROOT = Path(__file__).resolve().parents[2]
SOLUTION = ROOT / "tests" / "course" / "fixtures" / "course" / "solutions" / "98_fixture.ipynb"
pytestmark = pytest.mark.slow


def run_nbval(folder: Path, *paths: str, xdist: bool = False) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", folder / "conftest.py")
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rxXf", "--nbval-lax"]
    args += ["--nbval-current-env", "--nbval-cell-timeout=120"]
    args += ["-n", "2", "--dist", "loadfile"] if xdist else ["-p", "no:xdist"]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(
        [*args, *paths], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


def solution():
    return nbformat.read(SOLUTION, as_version=4)


def test_shipped_exercise_passes_because_its_checks_fail(tmp_path):
    (tmp_path / "exercises").mkdir()
    (tmp_path / "notebooks").mkdir()
    nbformat.write(exercise_notebook(solution()), tmp_path / "exercises" / "98_fixture.ipynb")
    # A solved notebook elsewhere: its check cells simply pass.
    nbformat.write(solution(), tmp_path / "notebooks" / "98_fixture.ipynb")
    proc = run_nbval(tmp_path, "notebooks", "exercises", xdist=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "10 passed, 2 xfailed" in out, out  # later cells ran after each failed check
    assert "XFAIL exercises/98_fixture.ipynb::Cell 2" in out, out
    assert "XFAIL exercises/98_fixture.ipynb::Cell 5" in out, out


def test_a_check_that_passes_in_an_exercise_fails_the_run(tmp_path):
    (tmp_path / "exercises").mkdir()
    nbformat.write(solution(), tmp_path / "exercises" / "98_fixture.ipynb")  # answers left in
    proc = run_nbval(tmp_path, "exercises")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed" in out and "XPASS(strict)" in out, out


def test_broken_check_or_failing_ordinary_cell_fails_the_run(tmp_path):
    (tmp_path / "exercises").mkdir()
    broken = exercise_notebook(solution())
    for cell in broken.cells:
        if has_tag(cell, "check") and cell.metadata["minimoe"]["exercise"] == "98.1":
            cell.source = "check_dubble(double)"  # NameError: the check itself is wrong
    broken.cells[5].source = "raise ValueError('an ordinary cell must pass')"
    nbformat.write(broken, tmp_path / "exercises" / "98_fixture.ipynb")
    proc = run_nbval(tmp_path, "exercises")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed" in out and "1 xfailed" in out, out
    assert "the check raised NameError" in out, out
