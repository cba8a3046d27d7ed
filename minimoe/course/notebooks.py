"""Exercise notebooks: generated from the solutions, stored without outputs.

The conventions, shared by every chapter:

- `solutions/NN_topic.ipynb` is authored; `exercises/NN_topic.ipynb` is generated from it.
- An *answer cell* is a code cell tagged `answer`, with metadata `{"minimoe": {"exercise": "01.2"}}`.
  Its source holds one or more regions between the lines `### BEGIN SOLUTION` and
  `### END SOLUTION`, always inside a function body. `generate` replaces each region by one line,
  at the BEGIN marker's indentation, that raises `NotImplementedError` naming the exercise.
- A *check cell* is a code cell tagged `check`, with metadata
  `{"minimoe": {"exercise": "01.2", "points": 2, "title": "one expert FFN"}}` (title optional).
  It calls a check function that raises AssertionError with a hint, or prints one pass line.

Generation is deterministic: regenerating gives byte-identical files, so a test can say when
exercises/ is stale. Notebooks are written with `nbformat.write` (sorted keys, one-space indent).

Command line (run from the repository root):

    python -m minimoe.course.notebooks generate [--solutions solutions] [--exercises exercises]
    python -m minimoe.course.notebooks check-stale [--solutions ...] [--exercises ...]
    python -m minimoe.course.notebooks check-clean DIR...
    python -m minimoe.course.notebooks strip DIR...

Left out: merging a learner's work into a regenerated exercise (exercises/ is overwritten).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = (
    'raise NotImplementedError("Exercise {exercise}: replace this line with your code '
    '(the hint is in the cell above)")'
)
CHAPTER_FILE = re.compile(r"^(\d{2})_[\w.-]*\.ipynb$")


class NotebookError(ValueError):
    """A notebook breaks the course's conventions (the message names the notebook and cell)."""


# --- reading and writing -------------------------------------------------------------------------


def read_notebook(path: str | Path) -> NotebookNode:
    """Read a notebook as nbformat v4, giving cells without an id a deterministic one.

    (nbformat would invent random ids, which would make generated files differ on every run.)
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise NotebookError(f"{path}: not a readable notebook ({err})") from err
    if not isinstance(raw, dict) or "cells" not in raw:
        raise NotebookError(f"{path}: not a notebook (no 'cells')")
    if raw.get("nbformat") == 4 and raw.get("nbformat_minor", 0) >= 5:
        for i, cell in enumerate(raw["cells"]):
            if isinstance(cell, dict):
                cell.setdefault("id", f"cell-{i}")
    try:  # nbformat joins the sources' lists of lines and upgrades older versions
        return nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as err:
        raise NotebookError(f"{path}: not a valid notebook ({err})") from err


def write_notebook(nb: NotebookNode, path: str | Path) -> bool:
    """Write `nb` to `path` with nbformat's stable JSON; skip the write when nothing changed.

    Returns:
        True if the file was (re)written.
    """
    path = Path(path)
    text = notebook_text(nb)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def notebook_text(nb: NotebookNode) -> str:
    """The exact text `nbformat.write` would store for `nb`."""
    return nbformat.writes(nb, version=4)


def cell_meta(cell: NotebookNode) -> dict:
    """The cell's `minimoe` metadata ({} when absent)."""
    meta = cell.get("metadata", {}).get("minimoe", {})
    return meta if isinstance(meta, dict) else {}


def has_tag(cell: NotebookNode, tag: str) -> bool:
    """Whether the cell carries the tag (`answer`, `check`, ...)."""
    return tag in cell.get("metadata", {}).get("tags", [])


def chapter_notebooks(folder: str | Path) -> list[Path]:
    """The `NN_topic.ipynb` files directly in `folder`, sorted by name ([] if it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and CHAPTER_FILE.match(p.name))


# --- generating exercises ------------------------------------------------------------------------


def stub_source(source: str, exercise: str, where: str) -> str:
    """Replace every BEGIN/END SOLUTION region of `source` by one `raise NotImplementedError` line.

    Args:
        source: a code cell's source.
        exercise: the exercise id named in the stub, e.g. "01.2".
        where: "notebook, cell N", for error messages.

    Returns:
        The source with each region (markers included) replaced by a line at BEGIN's indentation.
    """
    out: list[str] = []
    begin_line: int | None = None
    for n, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if begin_line is not None:
                raise NotebookError(
                    f"{where}: nested '{BEGIN}' on line {n} (the region opened on line "
                    f"{begin_line} is not closed)"
                )
            begin_line = n
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + STUB.format(exercise=exercise))
        elif marker == END:
            if begin_line is None:
                raise NotebookError(f"{where}: '{END}' on line {n} without a '{BEGIN}' before it")
            begin_line = None
        elif begin_line is None:
            out.append(line)
    if begin_line is not None:
        raise NotebookError(f"{where}: '{BEGIN}' on line {begin_line} is never closed by '{END}'")
    return "\n".join(out)


def clear_outputs(nb: NotebookNode) -> NotebookNode:
    """Remove outputs, execution counts and saved widget state, in place; returns `nb`."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def exercise_notebook(solution: NotebookNode, name: str = "notebook") -> NotebookNode:
    """The exercise version of a solution notebook: regions stubbed, outputs cleared.

    Args:
        solution: the solution notebook (not modified).
        name: the notebook's name, for error messages.

    Returns:
        A new notebook; everything but the regions and the outputs is identical.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(solution)))
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or (BEGIN not in cell.source and END not in cell.source):
            continue
        where = f"{name}, cell {i}"
        exercise = cell_meta(cell).get("exercise")
        if not exercise:
            raise NotebookError(
                f"{where}: has a solution region but no metadata minimoe.exercise "
                "(an answer cell needs {'minimoe': {'exercise': 'NN.M'}, 'tags': ['answer']})"
            )
        cell.source = stub_source(cell.source, str(exercise), where)
    return clear_outputs(nb)


def expected_exercises(solutions_dir: str | Path) -> dict[str, str]:
    """{file name: exact text} of every exercise notebook that `generate` would write."""
    return {
        path.name: notebook_text(exercise_notebook(read_notebook(path), str(path)))
        for path in chapter_notebooks(solutions_dir)
    }


def generate(
    solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises"
) -> list[Path]:
    """Write `exercises/NN_topic.ipynb` for each `solutions/NN_topic.ipynb`.

    Exercise notebooks without a solution are removed (exercises/ is generated, never edited).

    Args:
        solutions_dir: folder of authored solution notebooks.
        exercises_dir: folder to write to (created if missing).

    Returns:
        The files written or removed (unchanged files are not rewritten).
    """
    expected = expected_exercises(solutions_dir)  # every notebook parses before anything is written
    exercises_dir = Path(exercises_dir)
    exercises_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in expected.items():
        path = exercises_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in chapter_notebooks(exercises_dir):
        if path.name not in expected:
            path.unlink()
            changed.append(path)
    return changed


def stale_exercises(
    solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises"
) -> list[str]:
    """What differs between exercises/ and what `generate` would write ([] = up to date).

    Returns:
        One line per problem: "missing NAME", "extra NAME" or "differs NAME".
    """
    expected = expected_exercises(solutions_dir)
    present = {p.name: p for p in chapter_notebooks(exercises_dir)}
    problems = [f"missing {name}" for name in expected if name not in present]
    problems += [f"extra {name}" for name in present if name not in expected]
    problems += [
        f"differs {name}"
        for name, text in expected.items()
        if name in present and present[name].read_text(encoding="utf-8") != text
    ]
    return sorted(problems, key=lambda line: line.split(" ", 1)[1])


def is_stale(
    solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises"
) -> bool:
    """True when exercises/ is not exactly what `generate` would write from solutions/."""
    return bool(stale_exercises(solutions_dir, exercises_dir))


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m minimoe.course.notebooks generate|check-stale|check-clean|strip`."""
    parser = argparse.ArgumentParser(prog="python -m minimoe.course.notebooks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("generate", "write exercises/ from solutions/"),
        ("check-stale", "exit 1 if exercises/ differs from what generate would write"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--solutions", default="solutions", help="default: %(default)s")
        p.add_argument("--exercises", default="exercises", help="default: %(default)s")
    for name, text in (
        ("check-clean", "exit 1 if a notebook has outputs or execution counts"),
        ("strip", "remove outputs and execution counts in place"),
    ):
        sub.add_parser(name, help=text).add_argument("dirs", nargs="+", metavar="DIR")
    args = parser.parse_args(argv)
    from minimoe.course.clean import check_clean, strip  # clean.py builds on this module

    try:
        if args.command == "generate":
            for path in generate(args.solutions, args.exercises):
                print(f"{'wrote' if path.exists() else 'removed'} {path}")
        elif args.command == "check-stale":
            problems = stale_exercises(args.solutions, args.exercises)
            if problems:
                print("exercises/ is stale; run `make exercises`:", *problems, sep="\n  ")
                return 1
        elif args.command == "check-clean":
            problems = check_clean(args.dirs)
            if problems:
                print(
                    "notebooks stored with outputs; run `python -m minimoe.course.notebooks "
                    "strip DIR...`:",
                    *problems,
                    sep="\n  ",
                )
                return 1
        else:
            for path in strip(args.dirs):
                print(f"stripped {path}")
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
