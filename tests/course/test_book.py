"""The website's generated sources (minimoe.course.book): the table of contents and the course map
follow the notebooks present, problem sets become statements without solution code, and only
changed files are rewritten. Also the viz hook the site's build relies on (MINIMOE_BOOK=1):
explorers become static snapshots, plotly figures need no CDN."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from minimoe.course import book
from minimoe.course.notebooks import exercise_notebook

ROOT = Path(__file__).resolve().parents[2]


def _notebook(path: Path, *cells) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def course(tmp_path):
    """A course of two chapters (the real 00 and 02 lessons and problem sets) and the book files."""
    for folder in ("notebooks", "exercises"):
        (tmp_path / folder).mkdir()
        for name in ("00_start_here", "02_routing"):
            shutil.copy2(ROOT / folder / f"{name}.ipynb", tmp_path / folder)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "book").mkdir()
    shutil.copy2(ROOT / "book" / "index.md", tmp_path / "book" / "index.md")
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def _toc_files(root: Path) -> dict[str, list[str]]:
    toc = yaml.safe_load(book.toc(root))
    return {p["caption"]: [c["file"] for c in p["chapters"]] for p in toc["parts"]}


def test_chapters_are_the_numbered_notebooks_in_order(tmp_path):
    for name in ("10_serving", "02_routing", "00_start_here", "scratch", "2_bad", "03_x.py"):
        (tmp_path / (name if "." in name else f"{name}.ipynb")).write_text("{}")
    assert [p.name for p in book.chapters(tmp_path)] == [
        "00_start_here.ipynb", "02_routing.ipynb", "10_serving.ipynb",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="folder"):
        book.chapters(tmp_path / "missing")


def test_toc_lists_the_lessons_present_and_a_new_chapter_appears(course):
    parts = _toc_files(course)
    assert parts["Lessons"] == ["notebooks/00_start_here", "notebooks/02_routing"]
    assert parts["Problem sets"] == [
        "book/_generated/problems/00_start_here", "book/_generated/problems/02_routing",
    ]  # fmt: skip
    assert parts["Reference"][0] == "docs/README" and "docs/conventions" in parts["Reference"]
    # a new lesson without a problem set yet: a lesson page, no problem page
    _notebook(course / "notebooks" / "08_zoo.ipynb", nbformat.v4.new_markdown_cell("# The zoo"))
    parts = _toc_files(course)
    assert parts["Lessons"][-1] == "notebooks/08_zoo"
    assert "book/_generated/problems/08_zoo" not in parts["Problem sets"]
    assert yaml.safe_load(book.toc(course))["root"] == "book/_generated/index"


def test_course_map_rows_link_lessons_and_problem_sets(course):
    _notebook(course / "notebooks" / "08_zoo.ipynb", nbformat.v4.new_markdown_cell("# 08 · Zoo"))
    rows = [r for r in book.course_map(course).splitlines() if r.startswith("| 0")]
    assert [r[:4] for r in rows] == ["| 00", "| 02", "| 08"]
    assert "(../../notebooks/02_routing.ipynb)" in rows[1]
    assert "(problems/02_routing.md)" in rows[1]
    summary = book.readme_summaries(course / "README.md")["02_routing"]
    assert summary and summary in rows[1]
    assert "08 · Zoo" in rows[2] and "problems/08_zoo" not in rows[2]  # no problem set yet
    page = book.landing_page(course)
    assert book.COURSE_MAP not in page and rows[1] in page


def test_landing_page_needs_its_marker(course):
    (course / "book" / "index.md").write_text("# minimoe\n")
    with pytest.raises(ValueError, match="course map"):
        book.landing_page(course)


def test_statement_keeps_the_text_and_stubs_never_the_solution():
    solution = nbformat.read(ROOT / "solutions" / "02_routing.ipynb", as_version=4)
    text = book.exercise_statement(ROOT / "exercises" / "02_routing.ipynb")
    assert text.startswith("# Problem set 02")
    assert text.count("\n# ") == 0  # one title: the notebook's own is not repeated
    for cell in solution.cells:
        if cell.cell_type == "markdown":
            first = cell.source.strip().splitlines()[-1]
            assert first.replace("](../", "](../../../") in text
    # every line inside a solution region is absent; the stubs that replace them are present
    solved = []
    for cell in solution.cells:
        if "answer" in cell.metadata.get("tags", []):
            inside = False
            for line in cell.source.splitlines():
                if "### BEGIN SOLUTION" in line or "### END SOLUTION" in line:
                    inside = "BEGIN" in line
                elif inside and len(line.strip()) > 20:
                    solved.append(line.strip())
    # (a hint in the shipped markdown may quote a line of the answer: that is the learner's too)
    exercise = nbformat.read(ROOT / "exercises" / "02_routing.ipynb", as_version=4)
    hints = "\n".join(c.source for c in exercise.cells if c.cell_type == "markdown")
    assert solved and not [line for line in solved if line in text and line not in hints]
    assert text.count("NotImplementedError") >= 3
    assert "{download}`download it <../../../exercises/02_routing.ipynb>`" in text


def test_statement_of_a_generated_exercise(tmp_path):
    solution = nbformat.v4.new_notebook()
    answer = nbformat.v4.new_code_cell(
        "def f(x):\n    ### BEGIN SOLUTION\n    return x * 42  # the secret\n    ### END SOLUTION"
    )
    answer.metadata = {"tags": ["answer"], "minimoe": {"exercise": "09.1"}}
    solution.cells = [
        nbformat.v4.new_markdown_cell("# Problem set 09 · Scale\n\nSee [the docs](../docs/x.md)."),
        nbformat.v4.new_code_cell("setup = 1"),
        answer,
    ]
    path = tmp_path / "09_scale.ipynb"
    nbformat.write(exercise_notebook(solution), path)
    text = book.exercise_statement(path)
    assert "the secret" not in text and "setup = 1" not in text
    assert "Your answer to 09.1" in text and "NotImplementedError" in text
    assert "[the docs](../../../docs/x.md)" in text


def test_prepare_rewrites_only_what_changed_and_drops_stale_pages(course):
    written = book.prepare(course)
    gen = course / "book" / "_generated"
    assert {p.relative_to(gen).as_posix() for p in written} == {
        "_toc.yml", "index.md", "problems/00_start_here.md", "problems/02_routing.md",
    }  # fmt: skip
    stamp = 1_000_000_000
    for path in written:
        os.utime(path, (stamp, stamp))
    assert book.prepare(course) == []  # nothing changed: nothing rewritten, mtimes kept
    assert all(p.stat().st_mtime == stamp for p in written)
    (course / "notebooks" / "00_start_here.ipynb").unlink()
    (course / "exercises" / "00_start_here.ipynb").unlink()
    again = {p.relative_to(gen).as_posix() for p in book.prepare(course)}
    assert again == {"_toc.yml", "index.md"}
    assert not (gen / "problems" / "00_start_here.md").exists()
    assert (gen / "problems" / "02_routing.md").stat().st_mtime == stamp


@pytest.mark.slow  # builds a routing explorer (seconds on a busy CPU)
def test_explorer_snapshot_in_the_book_build(monkeypatch):
    from minimoe.viz import _widgets
    from minimoe.viz.routing_explorer import routing_explorer

    explorer = routing_explorer(n_experts=4, top_k=2, seed=0, max_tokens=16)
    monkeypatch.delenv(_widgets.BOOK_ENV, raising=False)
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()
    monkeypatch.setenv(_widgets.BOOK_ENV, "1")
    assert book.BOOK_ENV == _widgets.BOOK_ENV
    bundle = explorer._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}
    html = bundle["text/html"]
    assert html.count("Plotly.newPlot") == len(explorer.figures) == 2
    assert "make lab" in html and "top-k K <b>2</b>" in html and "experts E <b>4</b>" in html
    assert "https://" not in html and "<script src" not in html  # the page serves plotly.js
    explorer.controls["top_k"].value = 1  # the snapshot shows the figures as they are now
    assert "top-k K <b>1</b>" in explorer._repr_mimebundle_()["text/html"]


def test_book_renderer_draws_plotly_figures_without_a_cdn():
    import plotly.graph_objects as go
    import plotly.io as pio

    from minimoe.viz import _widgets

    before = pio.renderers.default
    try:
        _widgets.use_book_renderer()
        bundle = go.Figure(go.Bar(x=[1, 2], y=[3, 4]))._repr_mimebundle_()
    finally:
        pio.renderers.default = before
    assert list(bundle) == ["text/html"]
    assert "Plotly.newPlot" in bundle["text/html"] and "https://" not in bundle["text/html"]
