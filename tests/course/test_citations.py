"""The course cites only what it ships.

Every notebook (lessons, exercises, solutions), the README and the reference pages in docs/ may
point at files of the repository in three ways, and each must resolve:

- a markdown link `[text](relative/path#anchor)`, relative to the citing file; the anchor, when
  it points into a markdown file, must be one of that file's headings;
- a backticked repository path such as `docs/conventions.md` or `minimoe/routing.py`, relative to
  the repository root; with `::name` (`tests/test_x.py::test_y`) the function must exist there;
- a bare `NAME.md` in prose: some file of that name must be in the repository (a lesson once
  cited "CONVENTIONS.md", which no clone has).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_DIRS = ("docs", "minimoe", "tests", "notebooks", "exercises", "solutions", "results")
ROOT_FILES = ("README.md", "Makefile", "pyproject.toml", "constraints.txt", "environment.yml")

LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
BACKTICKED = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(
    rf"^(?:{'|'.join(TOP_DIRS)})/[\w./*-]*(?:::\w+)?$|^(?:{'|'.join(map(re.escape, ROOT_FILES))})$"
)
FENCED = re.compile(r"^( {4,}|\t).*$|^```.*?^```", re.M | re.S)
# A path a shown command writes (`--json results/gpu/bench.json`) is an output, not a citation.
WRITTEN = re.compile(r"(?:--json|--csv|--out|-o|>)\s+([\w./-]+)")
BARE_MD = re.compile(r"(?<![\w/.-])([A-Za-z][\w-]*\.md)\b")
# A two-letter placeholder in a path stands for a chapter number: exercises/NN_topic.ipynb.
PLACEHOLDER = {"NN": "[0-9][0-9]", "topic": "*"}


def cited_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("notebooks", "exercises", "solutions"):
        files += sorted((ROOT / folder).glob("*.ipynb"))
    return files


def texts(path: Path) -> list[tuple[str, str, bool]]:
    """(where, text, is_markdown) pieces of a file: the whole file, or each cell of a notebook.
    Links are read from markdown only (`a[i](x)` in code is indexing, not a link)."""
    if path.suffix != ".ipynb":
        return [(path.name, path.read_text(encoding="utf-8"), True)]
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [
        (
            f"{path.name} cell {i} ({c.get('id', '?')})",
            "".join(c["source"]),
            c["cell_type"] == "markdown",
        )
        for i, c in enumerate(cells)
    ]


def heading_anchors(md: Path) -> set[str]:
    """GitHub-style anchors of a markdown file's headings (lower case, punctuation dropped)."""
    anchors = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def glob_of(path: str) -> str:
    for placeholder, pattern in PLACEHOLDER.items():
        path = path.replace(placeholder, pattern)
    return path


def check_target(target: Path, anchor: str | None, function: str | None) -> str | None:
    """Why `target` (with its anchor or function) does not resolve, or None when it does."""
    if any(ch in str(target) for ch in "*[") and not target.exists():
        rel = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
        return None if list(ROOT.glob(str(rel))) else "matches no file"
    if not target.exists():
        return "no such file"
    if anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
        return f"no heading #{anchor} in {target.name}"
    if function and not re.search(
        rf"^\s*(?:async\s+)?def {re.escape(function)}\b|^class {re.escape(function)}\b",
        target.read_text(encoding="utf-8"),
        re.M,
    ):
        return f"no function {function} in {target.name}"
    return None


def broken_citations(path: Path, folder: Path | None = None) -> list[str]:
    """Every citation in `path` that does not resolve; relative links resolve from `folder`
    (default: the file's own folder)."""
    folder = folder or path.parent
    repo_md_names = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    problems = []
    for where, text, is_markdown in texts(path):
        written = [w.rstrip("/") for w in WRITTEN.findall(text)]
        prose = BACKTICKED.sub("``", FENCED.sub("", text)) if is_markdown else ""
        for m in LINK.finditer(prose):
            url = m.group(1)
            if re.match(r"^[a-z][a-z+.-]*:", url) or url.startswith("#"):
                continue  # web links and in-page anchors
            file_part, _, anchor = url.partition("#")
            why = check_target((folder / file_part).resolve(), anchor or None, None)
            if why:
                problems.append(f"{where}: link ({url}): {why}")
        for m in BACKTICKED.finditer(text):
            cited = m.group(1).strip()
            if not REPO_PATH.match(cited) or any(
                w == cited.rstrip("/") or w.startswith(cited.rstrip("/") + "/") for w in written
            ):
                continue
            file_part, _, function = cited.partition("::")
            why = check_target(ROOT / glob_of(file_part), None, function or None)
            if why:
                problems.append(f"{where}: `{cited}`: {why}")
        for m in BARE_MD.finditer(text):
            if m.group(1) not in repo_md_names:
                problems.append(f"{where}: {m.group(1)}: no file of that name in the repository")
    return problems


@pytest.mark.parametrize("path", cited_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_exists(path: Path) -> None:
    problems = broken_citations(path)
    assert not problems, "cites what the repository does not ship:\n" + "\n".join(problems)


def test_the_checker_finds_each_kind_of_broken_citation(tmp_path: Path) -> None:
    """The checker itself: each kind of citation, broken and sound (so the test can fail)."""
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": "see CONVENTIONS.md §1 and README.md"},
            {
                "cell_type": "markdown",
                "source": "[ref](../docs/missing.md) [ok](../docs/README.md)",
            },
            {"cell_type": "markdown", "source": "[anchor](../docs/conventions.md#no-such-heading)"},
            {"cell_type": "markdown", "source": "[anchor](../docs/conventions.md#gating)"},
            {"cell_type": "markdown", "source": "`minimoe/nope.py` and `minimoe/routing.py`"},
            {"cell_type": "markdown", "source": "`tests/core/test_routing.py::test_not_there`"},
            {
                "cell_type": "markdown",
                "source": "`tests/course/test_citations.py::broken_citations`",
            },
            {"cell_type": "markdown", "source": "`exercises/NN_topic.ipynb`, `python x/y.py`"},
            {"cell_type": "markdown", "source": "[web](https://example.org/a.md) [here](#top)"},
            {
                "cell_type": "markdown",
                "source": "`f[grid](...)` and `results/new/` from --json results/new/x.json",
            },
            {"cell_type": "code", "source": "y = f[k](x_TD[t_N])  # see `minimoe/gone.py`"},
        ]
    }
    probe = tmp_path / "probe.ipynb"
    probe.write_text(json.dumps(nb), encoding="utf-8")
    problems = broken_citations(probe, folder=ROOT / "notebooks")
    joined = "\n".join(problems)
    assert len(problems) == 6, joined
    for expected in (
        "cell 0 (?): CONVENTIONS.md",
        "cell 1 (?): link (../docs/missing.md): no such file",
        "cell 2 (?): link (../docs/conventions.md#no-such-heading): no heading",
        "cell 4 (?): `minimoe/nope.py`: no such file",
        "cell 5 (?): `tests/core/test_routing.py::test_not_there`: no function",
        "cell 10 (?): `minimoe/gone.py`: no such file",
    ):
        assert expected in joined, joined
