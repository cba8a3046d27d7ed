"""Grade submitted exercise notebooks against the canonical checks in solutions/.

    python -m minimoe grade PATH... [--solutions DIR] [--timeout S] [--json OUT] [--csv OUT]

PATH is a notebook or a folder of them (a classroom's submissions, `alice_01_topic.ipynb` or
`alice/01_topic.ipynb`). Each submission is matched to `solutions/NN_*.ipynb` by the chapter
number `NN_` in its file name, or by the notebook metadata `minimoe.chapter` when present.

The graded notebook is the learner's, with every cell tagged `check` removed and each canonical
check cell of the solution put back right after the learner's answer cell of the same exercise
(at the end if that answer cell was deleted): deleting or editing a check earns nothing. It runs
in a separate kernel with a per-cell timeout (`minimoe.course.runner`), in the submission's
folder. An exercise passes when all its check cells run without raising; the hint of a failure
is the last line of the exception's message.

Left out: sandboxing, and a learner who redefines a check function in an earlier cell (checks
should import their check function in the check cell itself).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from minimoe.course.notebooks import NotebookError, cell_meta, has_tag, read_notebook
from minimoe.course.runner import REPO_ROOT, run_cells

CHAPTER_IN_NAME = re.compile(r"(?<!\d)(\d{2})_")
FIELDS = (
    "student",
    "notebook",
    "chapter",
    "exercise",
    "title",
    "passed",
    "points",
    "max_points",
    "hint",
)


@dataclass
class Row:
    """One graded exercise (or, with exercise == "", a submission that could not be graded)."""

    student: str
    notebook: str
    chapter: str
    exercise: str
    title: str
    passed: bool
    points: int | float
    max_points: int | float
    hint: str


def find_submissions(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(notebook, student) for every notebook under `paths`, checkpoints left out.

    The student is the file name's prefix before the chapter number (`alice_01_x.ipynb`), else
    the sub-folder the notebook sits in below a given folder (`alice/01_x.ipynb`), else "".
    """
    found: list[tuple[Path, str]] = []
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob("*.ipynb"))
        for path in files:
            if ".ipynb_checkpoints" in path.parts:
                continue
            match = CHAPTER_IN_NAME.search(path.name)
            student = path.name[: match.start()].strip("_- .") if match else ""
            if not student and path != root and path.parent != root:
                student = path.parent.name
            found.append((path, student))
    return found


def chapter_of(path: Path, nb: NotebookNode) -> str | None:
    """The chapter "NN": metadata minimoe.chapter if set, else the `NN_` in the file name, else
    the chapter of the exercise numbers ("06.2") on the notebook's check cells, when they agree
    (a learner may rename the file: `alice_06.ipynb`)."""
    meta = nb.metadata.get("minimoe", {})
    if isinstance(meta, dict) and meta.get("chapter") is not None:
        chapter = meta["chapter"]
        return f"{chapter:02d}" if isinstance(chapter, int) else str(chapter)
    match = CHAPTER_IN_NAME.search(path.name)
    if match:
        return match.group(1)
    chapters = set()
    for cell in nb.cells:
        exercise = cell.get("metadata", {}).get("minimoe", {}).get("exercise")
        if isinstance(exercise, str) and re.fullmatch(r"\d{2}\.\d+", exercise):
            chapters.add(exercise[:2])
    return chapters.pop() if len(chapters) == 1 else None


def solution_for(chapter: str, solutions_dir: Path) -> Path | None:
    """solutions/NN_*.ipynb for chapter NN, or None."""
    matches = sorted(solutions_dir.glob(f"{chapter}_*.ipynb"))
    return matches[0] if matches else None


def graded_notebook(submission: NotebookNode, solution: NotebookNode) -> tuple[NotebookNode, dict]:
    """The learner's cells without their check cells, with the canonical checks put back.

    Returns:
        (notebook, {cell index: check cell metadata}) for every canonical check in it.
    """

    def copy(cell: NotebookNode) -> NotebookNode:
        return nbformat.from_dict(json.loads(json.dumps(cell)))

    cells = [copy(c) for c in submission.cells if not has_tag(c, "check")]
    checks = [c for c in solution.cells if c.cell_type == "code" and has_tag(c, "check")]
    inserted: dict[int, str] = {}  # position -> exercise of each check put back so far
    for check in checks:
        exercise = cell_meta(check).get("exercise")
        answers = [
            i
            for i, c in enumerate(cells)
            if c.cell_type == "code"
            and has_tag(c, "answer")
            and cell_meta(c).get("exercise") == exercise
        ]
        at = answers[-1] + 1 if answers else len(cells)
        while inserted.get(at) == exercise:  # several checks of one exercise keep their order
            at += 1
        inserted = {(i + 1 if i >= at else i): e for i, e in inserted.items()}
        inserted[at] = exercise
        cells.insert(at, copy(check))
    nb = nbformat.from_dict({**submission, "cells": cells})
    return nb, {i: cell_meta(nb.cells[i]) for i in sorted(inserted)}


def _error_row(path: Path, student: str, chapter: str | None, message: str) -> Row:
    return Row(student, str(path), chapter or "", "", "", False, 0, 0, message)


def grade_notebook(path: Path, student: str, solutions_dir: Path, timeout: float = 60) -> list[Row]:
    """Grade one submission. Never raises for a bad submission: it becomes an error row."""
    try:
        submission = read_notebook(path)
    except NotebookError as err:
        return [_error_row(path, student, None, str(err))]
    chapter = chapter_of(path, submission)
    if chapter is None:
        return [
            _error_row(
                path,
                student,
                None,
                "cannot tell the chapter: name the file "
                "NN_topic.ipynb or set the notebook metadata minimoe.chapter",
            )
        ]
    solution_path = solution_for(chapter, solutions_dir)
    if solution_path is None:
        return [
            _error_row(
                path,
                student,
                chapter,
                f"unknown chapter {chapter}: no {solutions_dir}/{chapter}_*.ipynb",
            )
        ]
    nb, checks = graded_notebook(submission, read_notebook(solution_path))
    try:
        runs = run_cells(nb, cwd=path.parent.resolve(), timeout=timeout)
    except Exception as err:  # a kernel that cannot start is the grader's problem, reported
        return [_error_row(path, student, chapter, f"could not run the notebook: {err}")]
    rows: dict[str, Row] = {}
    for i, meta in checks.items():
        exercise = str(meta.get("exercise", "?"))
        points = meta.get("points", 1)
        row = rows.setdefault(
            exercise,
            Row(
                student,
                str(path),
                chapter,
                exercise,
                str(meta.get("title") or exercise),
                True,
                0,
                0,
                "",
            ),
        )
        row.max_points += points
        if runs[i].ok:
            row.points += points
        else:
            row.passed = False
            row.hint = row.hint or runs[i].hint
    return list(rows.values())


def grade(paths: list[str | Path], solutions_dir: str | Path, timeout: float = 60) -> list[Row]:
    """Grade every notebook under `paths`. Returns one `Row` per exercise (or per bad notebook)."""
    rows: list[Row] = []
    for path, student in find_submissions(paths):
        rows += grade_notebook(path, student, Path(solutions_dir), timeout)
    return rows


def _points(x: float) -> str:
    return f"{x:g}"


def format_table(rows: list[Row]) -> str:
    """A score table per notebook, then the total."""
    lines: list[str] = []
    by_notebook: dict[str, list[Row]] = {}
    for row in rows:
        by_notebook.setdefault(row.notebook, []).append(row)
    for notebook, group in by_notebook.items():
        who = f"{group[0].student}: " if group[0].student else ""
        lines.append(f"{who}{notebook} (chapter {group[0].chapter or '?'})")
        if not group[0].exercise:
            lines += [f"  ERROR  {group[0].hint}", ""]
            continue
        width = max(len(r.title) for r in group)
        for r in group:
            result = "pass" if r.passed else "FAIL"
            score = f"{_points(r.points)}/{_points(r.max_points)}"
            hint = f"  {r.hint}" if r.hint else ""
            lines.append(f"  {r.exercise:<6} {r.title:<{width}}  {result}  {score:>7}{hint}")
        got, out_of = sum(r.points for r in group), sum(r.max_points for r in group)
        score = f"{_points(got)}/{_points(out_of)}"
        lines += [f"  {'total':<6} {'':<{width}}  {'':4}  {score:>7}", ""]
    got, out_of = sum(r.points for r in rows), sum(r.max_points for r in rows)
    lines.append(
        f"Total: {_points(got)}/{_points(out_of)} points over {len(by_notebook)} notebooks"
    )
    return "\n".join(lines)


def write_json(rows: list[Row], path: str | Path) -> None:
    """The rows as a JSON list of objects with the keys of `FIELDS`."""
    Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n", encoding="utf-8")


def write_csv(rows: list[Row], path: str | Path) -> None:
    """The rows as CSV with a header line of `FIELDS`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def default_solutions_dir() -> Path:
    """./solutions when it exists, else the solutions/ beside the minimoe package."""
    here = Path("solutions")
    return here if here.is_dir() else REPO_ROOT / "solutions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `grade` subcommand's arguments."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="notebooks or folders of them")
    parser.add_argument(
        "--solutions",
        type=Path,
        default=None,
        help="folder of the canonical solutions (default: ./solutions)",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds per cell (default 60)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the rows as JSON")
    parser.add_argument("--csv", type=Path, metavar="OUT", help="write the rows as CSV")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Grade, print the tables, write the reports. 0 even when exercises fail."""
    for p in args.paths:
        if not Path(p).exists():
            parser.error(f"no such file or folder: {p}")
    solutions = args.solutions or default_solutions_dir()
    if not solutions.is_dir():
        parser.error(f"solutions folder not found: {solutions} (use --solutions DIR)")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    if not find_submissions(args.paths):
        parser.error(f"no notebooks found under {' '.join(map(str, args.paths))}")
    rows = grade(args.paths, solutions, args.timeout)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
    if args.csv:
        write_csv(rows, args.csv)
    return 0
