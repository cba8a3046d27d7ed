"""Notebooks are stored without outputs: find the ones that have some, and strip them.

    python -m minimoe.course.notebooks check-clean DIR...   # exit 1, listing the files
    python -m minimoe.course.notebooks strip DIR...         # in place

"Outputs" are cell outputs, execution counts and saved widget state: they change on every run,
bloat diffs and, in an exercise, could give an answer away. Left out: cell metadata such as
`collapsed` or `scrolled`, which are kept.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from minimoe.course.notebooks import clear_outputs, read_notebook, write_notebook


def all_notebooks(dirs: list[str | Path]) -> list[Path]:
    """Every .ipynb under the given folders (or the given files), checkpoints left out."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if d.is_file():
            found.append(d)
        elif d.is_dir():
            found += [p for p in d.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    return sorted(found)


def dirty_cells(nb: NotebookNode) -> list[int]:
    """Indices of code cells with outputs or an execution count (-1 = saved widget state)."""
    bad = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    return ([-1] if "widgets" in nb.metadata else []) + bad


def check_clean(dirs: list[str | Path]) -> list[str]:
    """One line per notebook stored with outputs, execution counts or widget state ([] = clean)."""
    problems = []
    for path in all_notebooks(dirs):
        cells = dirty_cells(read_notebook(path))
        if cells:
            what = ", ".join("widget state" if i < 0 else f"cell {i}" for i in cells)
            problems.append(f"{path}: outputs or execution counts in {what}")
    return problems


def strip(dirs: list[str | Path]) -> list[Path]:
    """Remove outputs, execution counts and widget state in place. Returns the files changed."""
    changed = []
    for path in all_notebooks(dirs):
        nb = read_notebook(path)
        if dirty_cells(nb):
            write_notebook(clear_outputs(nb), path)
            changed.append(path)
    return changed
