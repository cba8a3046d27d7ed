"""exercises/ is generated from solutions/: regions stubbed, outputs cleared, byte-for-byte stable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from minimoe.course import clean
from minimoe.course import notebooks as nbs
from minimoe.course.notebooks import NotebookError, stub_source

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "course" / "fixtures" / "course" / "solutions"
STUB_98_1 = nbs.STUB.format(exercise="98.1")


def answer_cell(source: str, exercise: str | None = "01.1"):
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["answer"]
    if exercise:
        cell.metadata["minimoe"] = {"exercise": exercise}
    return cell


def write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_stub_replaces_each_region_at_its_indentation():
    source = (
        "def f(x):\n"
        "    ### BEGIN SOLUTION\n"
        "    y = x + 1\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n"
        "class A:\n"
        "    def g(self):\n"
        "        ### BEGIN SOLUTION\n"
        "        return 2\n"
        "        ### END SOLUTION\n"
        "        # kept"
    )
    stub = 'raise NotImplementedError("Exercise 01.2: replace this line with your code (the hint is in the cell above)")'
    expected = (
        f"def f(x):\n    {stub}\n\nclass A:\n    def g(self):\n        {stub}\n        # kept"
    )
    assert stub_source(source, "01.2", "nb, cell 0") == expected
    compile(expected, "stub", "exec")  # the stubbed cell still defines its functions


def test_source_without_regions_is_unchanged():
    source = "x = 1\n\n# ### not a marker\n"
    assert stub_source(source, "01.1", "nb") == source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION",
            "nested",
        ),
        ("def f():\n    return 1\n    ### END SOLUTION", "without a '### BEGIN SOLUTION'"),
        ("def f():\n    ### BEGIN SOLUTION\n    return 1", "never closed"),
    ],
)
def test_bad_markers_name_the_notebook_and_cell(tmp_path, source, message):
    nb = new_notebook(cells=[new_markdown_cell("intro"), answer_cell(source)])
    write(nb, tmp_path / "solutions" / "03_bad.ipynb")
    with pytest.raises(NotebookError, match=message) as err:
        nbs.generate(tmp_path / "solutions", tmp_path / "exercises")
    assert "03_bad.ipynb, cell 1" in str(err.value)
    assert not list((tmp_path / "exercises").glob("*.ipynb"))  # nothing half-written


def test_region_outside_an_answer_cell_is_an_error(tmp_path):
    nb = new_notebook(
        cells=[answer_cell("def f():\n    ### BEGIN SOLUTION\n    ### END SOLUTION", None)]
    )
    write(nb, tmp_path / "solutions" / "04_x.ipynb")
    with pytest.raises(NotebookError, match="04_x.ipynb, cell 0: .*minimoe.exercise"):
        nbs.generate(tmp_path / "solutions", tmp_path / "exercises")


def test_generated_fixture_stubs_answers_and_keeps_everything_else(tmp_path):
    solutions = tmp_path / "solutions"
    shutil.copytree(FIXTURE, solutions)
    sol = nbformat.read(solutions / "98_fixture.ipynb", as_version=4)
    sol.cells[5].outputs = [new_output("stream", name="stdout", text="42\n")]  # outputs go away
    sol.cells[5].execution_count = 7
    nbformat.write(sol, solutions / "98_fixture.ipynb")

    written = nbs.generate(solutions, tmp_path / "exercises")
    assert [p.name for p in written] == ["98_fixture.ipynb"]
    ex = nbformat.read(tmp_path / "exercises" / "98_fixture.ipynb", as_version=4)

    assert ex.cells[3].source == f'def double(x):\n    """Twice x."""\n    {STUB_98_1}'
    assert ex.cells[7].source.endswith(
        "    if x == 0:\n        return 0.0\n    " + nbs.STUB.format(exercise="98.2")
    )
    assert "BEGIN SOLUTION" not in json.dumps(ex) and "x / 2" not in json.dumps(ex)
    assert ex.metadata == sol.metadata
    assert len(ex.cells) == len(sol.cells)
    for i, (e, s) in enumerate(zip(ex.cells, sol.cells)):
        assert (e.cell_type, e.id, e.metadata) == (s.cell_type, s.id, s.metadata), i
        if s.cell_type == "code":
            assert e.outputs == [] and e.execution_count is None
        if i not in (3, 7):
            assert e.source == s.source, i


def test_generate_is_deterministic_and_skips_unchanged_files(tmp_path):
    nb = new_notebook(
        cells=[answer_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")]
    )
    raw = json.loads(nbformat.writes(nb))
    for cell in raw["cells"]:
        del cell["id"]  # nbformat would invent random ids for these
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "01_x.ipynb").write_text(json.dumps(raw))
    shutil.copy(FIXTURE / "98_fixture.ipynb", tmp_path / "solutions")

    nbs.generate(tmp_path / "solutions", tmp_path / "a")
    nbs.generate(tmp_path / "solutions", tmp_path / "b")
    for name in ("01_x.ipynb", "98_fixture.ipynb"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert nbs.generate(tmp_path / "solutions", tmp_path / "a") == []
    assert not nbs.is_stale(tmp_path / "solutions", tmp_path / "a")


def test_stale_lists_missing_extra_and_changed_files_and_generate_fixes_them(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "solutions")
    shutil.copy(FIXTURE / "98_fixture.ipynb", tmp_path / "solutions" / "97_other.ipynb")
    exercises = tmp_path / "exercises"
    assert nbs.stale_exercises(tmp_path / "solutions", exercises) == [
        "missing 97_other.ipynb",
        "missing 98_fixture.ipynb",
    ]
    nbs.generate(tmp_path / "solutions", exercises)
    (exercises / "05_orphan.ipynb").write_text((exercises / "97_other.ipynb").read_text())
    edited = nbformat.read(exercises / "98_fixture.ipynb", as_version=4)
    edited.cells[3].source = "def double(x):\n    return 2 * x"
    nbformat.write(edited, exercises / "98_fixture.ipynb")
    assert nbs.stale_exercises(tmp_path / "solutions", exercises) == [
        "extra 05_orphan.ipynb",
        "differs 98_fixture.ipynb",
    ]
    assert (
        nbs.main(
            [
                "check-stale",
                "--solutions",
                str(tmp_path / "solutions"),
                "--exercises",
                str(exercises),
            ]
        )
        == 1
    )
    nbs.main(
        ["generate", "--solutions", str(tmp_path / "solutions"), "--exercises", str(exercises)]
    )
    assert not (exercises / "05_orphan.ipynb").exists()
    assert nbs.stale_exercises(tmp_path / "solutions", exercises) == []


def test_repository_exercises_are_not_stale():
    """exercises/ must be exactly what `make exercises` writes from solutions/ (also when empty)."""
    problems = nbs.stale_exercises(ROOT / "solutions", ROOT / "exercises")
    assert problems == [], "exercises/ is stale; run `make exercises`:\n" + "\n".join(problems)


def test_check_clean_and_strip(tmp_path, capsys):
    nb = new_notebook(cells=[new_code_cell("print(1)"), new_code_cell("x = 2")])
    nb.cells[0].outputs = [new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].execution_count = 3
    dirty = write(nb, tmp_path / "lessons" / "sub" / "01_a.ipynb")
    write(new_notebook(cells=[new_code_cell("y = 1")]), tmp_path / "lessons" / "02_b.ipynb")
    write(nb, tmp_path / "lessons" / ".ipynb_checkpoints" / "01_a-checkpoint.ipynb")

    assert clean.check_clean([tmp_path / "lessons"]) == [
        f"{dirty}: outputs or execution counts in cell 0, cell 1"
    ]
    assert nbs.main(["check-clean", str(tmp_path / "lessons")]) == 1
    assert "01_a.ipynb" in capsys.readouterr().out

    assert clean.strip([tmp_path / "lessons"]) == [dirty]
    assert nbs.main(["check-clean", str(tmp_path / "lessons")]) == 0
    stripped = nbformat.read(dirty, as_version=4)
    assert [c.source for c in stripped.cells] == ["print(1)", "x = 2"]


def test_cli_reports_bad_markers_with_exit_code_2(tmp_path, capsys):
    write(new_notebook(cells=[answer_cell("### END SOLUTION")]), tmp_path / "s" / "01_x.ipynb")
    assert (
        nbs.main(
            ["generate", "--solutions", str(tmp_path / "s"), "--exercises", str(tmp_path / "e")]
        )
        == 2
    )
    assert "01_x.ipynb, cell 0" in capsys.readouterr().err
