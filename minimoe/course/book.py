"""The course as a website: the table of contents, the course map and the problem sets' statements
generated from the notebooks present, then Jupyter Book 1 (Sphinx + MyST-NB) builds the site.

Nothing here lists the chapters: a new `notebooks/NN_topic.ipynb` (with its problem set in
`exercises/NN_topic.ipynb`) appears in the site on the next build. Generated files go to
`book/_generated/` (git-ignored); only files whose text changes are rewritten, so Sphinx re-reads
only what changed and jupyter-cache re-executes only the lessons whose code changed.

Why Jupyter Book 1.0.x and not 2 (mystmd): mystmd downloads its site theme from the network at
build time; Jupyter Book 1 and its Sphinx theme come from PyPI alone, so the site builds on a
machine that reaches only the package registries.

Command line (from the repository root; `make book` runs `build`):

    python -m minimoe.course.book prepare [--root .]            # write book/_generated/ only
    python -m minimoe.course.book build [--root .] [--out build/book]

The lessons run with MINIMOE_BOOK=1: `minimoe.viz` then shows each explorer as a static snapshot
(a widget needs a live kernel) and draws plotly figures with the page's own plotly.js.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat

CHAPTER = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
GENERATED = Path("book") / "_generated"
BOOK_ENV = "MINIMOE_BOOK"  # the same name as minimoe.viz._widgets.BOOK_ENV (viz is not imported)
COURSE_MAP = "<!-- course map -->"
# a markdown link or image target that climbs out of its folder: `](../docs/x.md)`
UP_LINK = re.compile(r"\]\((\.\./)")


def chapters(folder: str | Path) -> list[Path]:
    """The chapter notebooks `NN_topic.ipynb` of a folder, in chapter order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder must be a directory, got {str(folder)!r}")
    return sorted(p for p in folder.iterdir() if CHAPTER.match(p.name))


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The first markdown heading of a notebook (without its #s), else `fallback`."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return fallback


def readme_summaries(readme: str | Path) -> dict[str, str]:
    """`notebook stem -> what you see and do`, from the README's course table (rows like
    `| 02 | `02_routing` | softmax gating ... |`); {} when the README has no such table."""
    path = Path(readme)
    if not path.exists():
        return {}
    rows = re.findall(
        r"^\|\s*\d\d\s*\|\s*`(\d\d_\w+)`\s*\|\s*(.+?)\s*\|\s*$", path.read_text(), re.M
    )
    return dict(rows)


def course_map(root: str | Path) -> str:
    """The landing page's course map: one row per lesson present, linking the lesson and its
    problem set (links relative to book/_generated/) (the summary from the README's course table, when it has that chapter)."""
    root = Path(root)
    summaries = readme_summaries(root / "README.md")
    lines = ["| ch | lesson | problem set | what you see and do |", "|---|---|---|---|"]
    for path in chapters(root / "notebooks"):
        nb = nbformat.read(path, as_version=4)
        title = _title(nb, path.stem)
        problems = (
            f"[problem set](problems/{path.stem}.md)"
            if (root / "exercises" / path.name).exists()
            else ""
        )
        summary = summaries.get(path.stem, "")
        lines.append(
            f"| {path.stem[:2]} | [{title}](../../notebooks/{path.stem}.ipynb) | {problems} | "
            f"{summary} |"
        )
    return "\n".join(lines) + "\n"


def landing_page(root: str | Path) -> str:
    """The site's first page: book/index.md with its `<!-- course map -->` line replaced by the
    course map of the lessons present (the page is written to book/_generated/index.md)."""
    root = Path(root)
    text = (root / "book" / "index.md").read_text()
    if COURSE_MAP not in text:
        raise ValueError(f"book/index.md must hold the line {COURSE_MAP!r}")
    return text.replace(COURSE_MAP, course_map(root).rstrip("\n"))


def exercise_statement(path: str | Path, depth: int = 3) -> str:
    """A problem set as a page of statements: the markdown of `exercises/NN_topic.ipynb` and its
    answer cells (the stubs to fill in, never a solution), with a link to the notebook itself.

    `depth`: how many folders the page sits below the repository root (book/_generated/problems
    is 3), so links that climbed out of exercises/ (`../docs/x.md`) still point at their file.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    up = "../" * depth
    title = _title(nb, path.stem)
    parts = [
        f"# {title}\n",
        "```{note}\n"
        f"The statements of the problem set `exercises/{path.name}`. The notebook itself "
        f"({{download}}`download it <{up}exercises/{path.name}>`) holds the setup cells, the checks "
        "that grade each answer, and the investigations. To work on it, run the course locally: "
        "`make lab` opens JupyterLab with your own copy in `workspace/`.\n```\n",
    ]
    first_heading_dropped = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = cell.source
            if not first_heading_dropped and text.lstrip().startswith("# "):
                text = text.lstrip().split("\n", 1)[1] if "\n" in text.lstrip() else ""
                first_heading_dropped = True
            parts.append(UP_LINK.sub(lambda _m: "](" + up, text).strip() + "\n")
        elif cell.cell_type == "code" and "answer" in cell.metadata.get("tags", []):
            exercise = cell.metadata.get("minimoe", {}).get("exercise", "")
            label = f"Your answer to {exercise}" if exercise else "Your answer"
            parts.append(
                f"*{label} (in the notebook):*\n\n```python\n{cell.source.rstrip()}\n```\n"
            )
    return "\n".join(p for p in parts if p.strip())


def toc(root: str | Path) -> str:
    """Jupyter Book's _toc.yml: the landing page, then the lessons, the problem sets and the
    reference docs present (paths relative to the repository root, without suffixes)."""
    root = Path(root)
    gen = GENERATED.as_posix()
    lessons = chapters(root / "notebooks")
    problems = [p for p in lessons if (root / "exercises" / p.name).exists()]
    docs = sorted(p for p in (root / "docs").glob("*.md") if p.name != "README.md")
    lines = ["# Generated by minimoe.course.book: do not edit", "format: jb-book",
             f"root: {gen}/index", "parts:"]  # fmt: skip

    def part(caption: str, files: list[str]) -> None:
        if files:
            lines.append(f"  - caption: {caption}")
            lines.append("    chapters:")
            lines.extend(f"      - file: {f}" for f in files)

    part("Lessons", [f"notebooks/{p.stem}" for p in lessons])
    part("Problem sets", [f"{gen}/problems/{p.stem}" for p in problems])
    readme = ["docs/README"] if (root / "docs" / "README.md").exists() else []
    part("Reference", readme + [f"docs/{p.stem}" for p in docs])
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    """Write `text` unless the file already holds it (an unchanged file keeps its mtime, so
    Sphinx does not re-read it). True when written."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def prepare(root: str | Path = ".") -> list[Path]:
    """Write book/_generated/ (_toc.yml, index.md, problems/*.md) from the notebooks present;
    remove generated problem pages whose chapter is gone. Returns the files written."""
    root = Path(root)
    gen = root / GENERATED
    written = []
    expected = {}
    for path in chapters(root / "notebooks"):
        exercise = root / "exercises" / path.name
        if exercise.exists():
            expected[gen / "problems" / f"{path.stem}.md"] = exercise_statement(exercise)
    expected[gen / "_toc.yml"] = toc(root)
    expected[gen / "index.md"] = landing_page(root)
    for path, text in expected.items():
        if _write_if_changed(path, text):
            written.append(path)
    for stale in (gen / "problems").glob("*.md"):
        if stale not in expected:
            stale.unlink()
    return written


def build(root: str | Path = ".", out: str | Path = "build/book") -> int:
    """Prepare, then build the site with Jupyter Book into `out`/_build/html (executed outputs
    cached in `out`/_build/.jupyter_cache). Returns jupyter-book's exit status."""
    root = Path(root).resolve()
    prepare(root)
    jb = Path(sys.executable).parent / "jupyter-book"
    if not jb.exists():
        raise FileNotFoundError(
            f"{jb} not found: install the book extra (pip install -e '.[book]')"
        )
    env = {**os.environ, BOOK_ENV: "1"}
    cmd = [str(jb), "build", str(root), "--config", str(root / "book" / "_config.yml"),
           "--toc", str(root / GENERATED / "_toc.yml"), "--path-output", str(Path(out).resolve())]  # fmt: skip
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env=env, cwd=root)
    print(f"book: built in {time.perf_counter() - t0:.0f} s -> {Path(out) / '_build' / 'html'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimoe.course.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p_prepare = sub.add_parser("prepare", help="write book/_generated/ from the notebooks present")
    p_prepare.add_argument("--root", default=".")
    p_build = sub.add_parser("build", help="prepare, then build the site with Jupyter Book")
    p_build.add_argument("--root", default=".")
    p_build.add_argument("--out", default="build/book")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for path in prepare(args.root):
            print(f"wrote {path}")
        return 0
    return build(args.root, args.out)


if __name__ == "__main__":
    sys.exit(main())
