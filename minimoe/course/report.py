"""The grader's report: one `Row` per graded exercise, the score table printed per notebook,
and the JSON and CSV files (each written whole through a temporary file, so a reader never sees
half a report).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

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


def _replace(path: str | Path, write) -> None:
    """Write through a temporary file and rename it, so a reader never sees half a report."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        write(f)
    tmp.replace(path)


def write_json(rows: list[Row], path: str | Path) -> None:
    """The rows as a JSON list of objects with the keys of `FIELDS`."""
    text = json.dumps([asdict(r) for r in rows], indent=1) + "\n"
    _replace(path, lambda f: f.write(text))


def write_csv(rows: list[Row], path: str | Path) -> None:
    """The rows as CSV with a header line of `FIELDS`."""

    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)

    _replace(path, write)
