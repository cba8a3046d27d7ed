"""The grader: canonical checks restored, every failure graded (never a crash), reports written.

(The hostile submissions, built from the shipped notebooks, are in test_grade_adversarial.py.)

The classroom is built from the fixture chapter tests/course/fixtures/course/solutions/98_fixture.ipynb:
exercise 98.1 (`double`, 2 points) and 98.2 (`halve`, 1 point).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pytest

import minimoe
from minimoe.__main__ import main
from minimoe.course import grade as g
from minimoe.course.notebooks import exercise_notebook, has_tag
from minimoe.course.report import FIELDS
from minimoe.course.runner import run_cells

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "tests" / "course" / "fixtures" / "course" / "solutions"
SOLUTION = SOLUTIONS / "98_fixture.ipynb"


def solution():
    return nbformat.read(SOLUTION, as_version=4)


def replace_answer(nb, exercise: str, body: str):
    """The learner's version of an answer cell: the function's body replaced by `body`."""
    for cell in nb.cells:
        if has_tag(cell, "answer") and cell.metadata["minimoe"]["exercise"] == exercise:
            header = cell.source.split("\n")[0]
            cell.source = header + "\n" + "\n".join("    " + line for line in body.split("\n"))
    return nb


def drop(nb, predicate):
    nb.cells = [c for c in nb.cells if not predicate(c)]
    return nb


def is_check(exercise):
    return lambda c: has_tag(c, "check") and c.metadata["minimoe"]["exercise"] == exercise


def is_answer(exercise):
    return lambda c: has_tag(c, "answer") and c.metadata["minimoe"]["exercise"] == exercise


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """A folder of submissions, one scenario each, graded once with a 3 s cell timeout."""
    room = tmp_path_factory.mktemp("classroom")
    (room / "bob").mkdir()
    write = nbformat.write
    write(solution(), room / "alice_98_fixture.ipynb")  # all correct
    bob = replace_answer(solution(), "98.2", "return x")  # wrong, and the check deleted
    write(drop(bob, lambda c: has_tag(c, "check")), room / "bob" / "98_fixture.ipynb")
    carol = replace_answer(solution(), "98.1", "while True:\n    pass")  # an endless loop
    write(carol, room / "carol_98_fixture.ipynb")
    dan = replace_answer(solution(), "98.1", "return 1 / 0")  # raises, check cell edited ...
    for cell in dan.cells:
        if is_check("98.1")(cell):
            cell.source = 'print("98.1 double: pass")'
    write(drop(dan, is_answer("98.2")), room / "dan_98_fixture.ipynb")  # ... answer 98.2 deleted
    write(exercise_notebook(solution()), room / "erin_98_fixture.ipynb")  # handed in untouched
    write(solution(), room / "frank_97_unknown.ipynb")  # no such chapter
    write(nbformat.v4.new_notebook(), room / "notes.ipynb")  # no chapter at all
    return room, g.grade([room], SOLUTIONS, timeout=3)


def rows_of(rows, student):
    return {r.exercise: r for r in rows if r.student == student}


def test_student_and_chapter_come_from_file_names_and_folders(tmp_path):
    for name in ("alice_01_dense.ipynb", "bob/02_routing.ipynb", "03_capacity.ipynb"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = {p.relative_to(tmp_path).as_posix(): s for p, s in g.find_submissions([tmp_path])}
    assert found == {
        "alice_01_dense.ipynb": "alice",
        "bob/02_routing.ipynb": "bob",
        "03_capacity.ipynb": "",
    }
    nb = nbformat.v4.new_notebook()
    assert g.chapter_of(Path("x_2024_05_a.ipynb"), nb) == "05"
    # a student name ending in two digits: the chapter is the last NN_, or the one that exists
    assert g.chapter_of(Path("student91_01_dense.ipynb"), nb) == "01"
    assert g.chapter_of(Path("bob_01_notes_91_x.ipynb"), nb, known={"00", "01"}) == "01"
    (tmp_path / "student91_01_dense.ipynb").write_text("{}")
    assert g.find_submissions([tmp_path / "student91_01_dense.ipynb"])[0][1] == "student91"
    assert g.chapter_of(Path("notes.ipynb"), nb) is None
    nb.metadata["minimoe"] = {"chapter": 3}
    assert g.chapter_of(Path("notes.ipynb"), nb) == "03"
    # a renamed file: the chapter comes from its check cells' exercise numbers, if they agree
    checks = nbformat.v4.new_notebook()
    for number in ("06.1", "06.3"):
        cell = nbformat.v4.new_code_cell("check()", metadata={"minimoe": {"exercise": number}})
        checks.cells.append(cell)
    assert g.chapter_of(Path("alice_06.ipynb"), checks) == "06"
    checks.cells[1].metadata["minimoe"]["exercise"] = "07.1"
    assert g.chapter_of(Path("alice_06.ipynb"), checks) is None


def test_graded_notebook_restores_each_check_after_its_answer():
    learner = replace_answer(solution(), "98.2", "return x")
    learner.cells.append(nbformat.v4.new_code_cell("print('mine')"))
    for cell in learner.cells:
        if has_tag(cell, "check"):
            cell.source = "pass  # edited"
    graded = g.graded_notebook(learner, solution(), nonce="n0nce")
    nb, checks = graded.nb, graded.checks
    canonical = [c for c in solution().cells if has_tag(c, "check")]
    for i, check in zip(checks, canonical):  # the canonical source, run through the guard
        assert repr(check.source) in nb.cells[i].source and "'n0nce'" in nb.cells[i].source
        assert "run_check" in nb.cells[i].source
    # the guard's first cell; then each answer cell between a marker and its check
    assert list(checks) == [6, 11]
    assert [checks[i]["exercise"] for i in checks] == ["98.1", "98.2"]
    assert "arm()" in nb.cells[0].source
    assert "before_answer(['double']" in nb.cells[4].source
    assert nb.cells[5].source == solution().cells[3].source
    assert graded.grader_cells == {0, 4, 6, 9, 11}
    assert "pass  # edited" not in [c.source for c in nb.cells]
    assert nb.cells[-1].source == "print('mine')"


def test_a_check_whose_answer_cell_was_deleted_is_not_run_but_failed():
    learner = drop(drop(solution(), is_answer("98.1")), lambda c: has_tag(c, "check"))
    graded = g.graded_notebook(learner, solution())
    assert [graded.checks[i]["exercise"] for i in graded.checks] == ["98.2"]
    assert [m["exercise"] for m in graded.missing] == ["98.1"]
    assert not any("run_check('98.1'" in c.source for c in graded.nb.cells)


@pytest.mark.slow
def test_correct_submission_earns_every_point(classroom):
    rows = rows_of(classroom[1], "alice")
    assert {e: (r.passed, r.points, r.max_points) for e, r in rows.items()} == {
        "98.1": (True, 2, 2),
        "98.2": (True, 1, 1),
    }
    assert rows["98.1"].title == "double a number" and rows["98.2"].title == "98.2"
    assert rows["98.1"].chapter == "98" and rows["98.1"].hint == ""


@pytest.mark.slow
def test_wrong_answer_with_deleted_check_fails_with_the_checks_hint(classroom):
    rows = rows_of(classroom[1], "bob")
    assert (rows["98.1"].passed, rows["98.1"].points) == (True, 2)
    assert (rows["98.2"].passed, rows["98.2"].points, rows["98.2"].max_points) == (False, 0, 1)
    assert rows["98.2"].hint == (
        "AssertionError: halve(3) returned 3, expected 1.5: use true division"
    )


@pytest.mark.slow
def test_endless_loop_times_out_and_later_exercises_are_still_graded(classroom):
    rows = rows_of(classroom[1], "carol")
    assert not rows["98.1"].passed and rows["98.1"].hint.startswith("TimeoutError")
    assert (rows["98.2"].passed, rows["98.2"].points) == (True, 1)


@pytest.mark.slow
def test_exception_and_edited_check_and_deleted_answer(classroom):
    rows = rows_of(classroom[1], "dan")
    assert rows["98.1"].hint == "ZeroDivisionError: division by zero"
    assert rows["98.2"].hint.startswith("the answer cell of exercise 98.2 is missing")
    assert (rows["98.2"].max_points, rows["98.2"].title) == (1, "98.2")
    assert sum(r.points for r in rows.values()) == 0


@pytest.mark.slow
def test_untouched_exercise_fails_with_the_stub_message(classroom):
    rows = rows_of(classroom[1], "erin")
    assert rows["98.1"].hint == (
        "NotImplementedError: Exercise 98.1: replace this line with your code "
        "(the hint is in the cell above)"
    )
    assert not rows["98.2"].passed and rows["98.2"].hint.startswith("NotImplementedError")


@pytest.mark.slow
def test_unknown_chapter_and_unnamed_notebook_are_error_rows(classroom):
    errors = {Path(r.notebook).name: r for r in classroom[1] if not r.exercise}
    assert set(errors) == {"frank_97_unknown.ipynb", "notes.ipynb"}
    assert "unknown chapter 97" in errors["frank_97_unknown.ipynb"].hint
    assert "cannot tell the chapter" in errors["notes.ipynb"].hint
    assert all(r.points == 0 and r.max_points == 0 for r in errors.values())


@pytest.mark.slow
def test_table_json_and_csv_reports(classroom, tmp_path):
    rows = classroom[1]
    table = g.format_table(rows)
    assert table.splitlines()[-1] == "Total: 6/15 points over 7 notebooks"
    assert "bob: " in table and "FAIL" in table and "ERROR" in table
    g.write_json(rows, tmp_path / "r.json")
    g.write_csv(rows, tmp_path / "r.csv")
    as_json = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "r.csv", newline="") as f:
        as_csv = list(csv.DictReader(f))
    assert len(as_json) == len(as_csv) == len(rows) == 12
    assert all(list(r) == list(FIELDS) for r in as_json) and list(as_csv[0]) == list(FIELDS)
    bob = next(r for r in as_csv if r["student"] == "bob" and r["exercise"] == "98.2")
    assert (bob["passed"], bob["points"], bob["max_points"], bob["chapter"]) == (
        "False",
        "0",
        "1",
        "98",
    )


@pytest.mark.slow
def test_cli_grades_one_notebook_and_writes_reports(tmp_path, capsys):
    shutil.copy(SOLUTION, tmp_path / "zoe_98_fixture.ipynb")
    code = main(
        [
            "grade",
            str(tmp_path / "zoe_98_fixture.ipynb"),
            "--solutions",
            str(SOLUTIONS),
            "--timeout",
            "20",
            "--json",
            str(tmp_path / "out.json"),
            "--csv",
            str(tmp_path / "out.csv"),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("Total: 3/3 points over 1 notebooks")
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [(r["student"], r["exercise"], r["passed"], r["points"]) for r in rows] == [
        ("zoe", "98.1", True, 2),
        ("zoe", "98.2", True, 1),
    ]
    assert (tmp_path / "out.csv").read_text().startswith(",".join(FIELDS))


def test_cli_usage_errors_exit_2(tmp_path):
    for argv in (
        ["grade", str(tmp_path / "missing.ipynb"), "--solutions", str(SOLUTIONS)],
        ["grade", str(tmp_path), "--solutions", str(SOLUTIONS)],  # no notebooks in it
        ["grade", str(SOLUTION), "--solutions", str(tmp_path / "nowhere")],
        ["grade", str(SOLUTION), "--solutions", str(SOLUTIONS), "--timeout", "0"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv


@pytest.mark.slow
def test_runner_works_in_the_notebooks_folder_with_this_minimoe(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import os, minimoe\nprint(os.getcwd())\nprint(minimoe.__file__)"
            ),
            nbformat.v4.new_markdown_cell("text"),
            nbformat.v4.new_code_cell("import os\nos._exit(3)"),
            nbformat.v4.new_code_cell("print('after')"),
        ]
    )
    runs = run_cells(nb, tmp_path, timeout=20)
    assert runs[0].stdout.splitlines() == [str(tmp_path), minimoe.__file__]
    assert [r.status for r in runs] == ["ok", "skipped", "died", "ok"]
    assert runs[3].stdout == "after\n"


def test_submissions_are_decoded_by_their_byte_order_mark_or_refused_with_a_reason():
    text = nbformat.writes(solution())
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"):
        data = text.encode(encoding)
        if encoding == "utf-16-be":
            data = b"\xfe\xff" + data
        nb = g.load_submission(data)
        assert [c.source for c in nb.cells] == [c.source for c in solution().cells], encoding
    for data, reason in (
        (b"PK\x03\x04rest", "a zip archive, not a notebook"),
        (text[:100].encode(), "not valid JSON (line"),
        ("café".encode("latin-1"), "not UTF-8 text"),
        (b"[1, 2]", "not a notebook (the JSON is not an object)"),
        (b'{"cells": 3}', "not a notebook (no list of cells)"),
    ):
        with pytest.raises(g.SubmissionError) as err:
            g.load_submission(data)
        assert str(err.value).startswith(reason), str(err.value)


def test_null_and_odd_metadata_read_as_absent():
    raw = json.loads(nbformat.writes(solution()))
    raw["cells"][3]["metadata"] = {"tags": None, "minimoe": {"exercise": "98.1"}}
    raw["cells"][4]["metadata"] = None
    raw["cells"][5]["metadata"] = {"tags": [None, 7, "answer"], "minimoe": "junk"}
    raw["cells"].append("not a cell")
    raw["metadata"] = {"minimoe": {"chapter": ["junk"]}, "kernelspec": None}
    nb = g.load_submission(json.dumps(raw).encode())
    assert len(nb.cells) == len(solution().cells)
    assert not has_tag(nb.cells[3], "answer") and not has_tag(nb.cells[4], "check")
    assert has_tag(nb.cells[5], "answer") and nb.cells[5].metadata["minimoe"] == {}
    assert g.chapter_of(Path("alice_98_x.ipynb"), nb) == "98"
    graded = g.graded_notebook(nb, solution())
    assert [m["exercise"] for m in graded.missing] == ["98.1"]  # its answer cell lost its tag


def test_names_tested_are_the_answers_passed_to_the_check():
    assert g.names_tested("from minimoe.course.checks import check_ffn\n\ncheck_ffn(ffn)") == [
        "ffn"
    ]
    assert g.names_tested("check_bias(update_bias, fn=biased_topk)") == [
        "update_bias",
        "biased_topk",
    ]
    assert g.names_tested("x = f\ncheck(x, len)") == []


def test_check_verdict_needs_the_evidence_line():
    from minimoe.course.guard import evidence
    from minimoe.course.runner import CellRun

    ok = CellRun(4, "ok", stdout=f"✓ passed\n{evidence('abc', '98.1')}\n")
    assert g.check_verdict(ok, "abc", "98.1") == (True, "")
    for run in (
        CellRun(4, "ok", stdout="✓ Exercise 98.1: passed\n"),  # a fake pass line
        CellRun(4, "ok", stdout=evidence("abc", "98.2") + "\n"),  # another exercise's
        CellRun(4, "ok", stdout=evidence("xyz", "98.1") + "\n"),  # another run's nonce
    ):
        passed, hint = g.check_verdict(run, "abc", "98.1")
        assert not passed and hint.startswith("check tampered with: the check cell ran but")
    tampered = CellRun(4, "error", "CheckTampered", "check tampered with: torch.equal replaced")
    assert g.check_verdict(tampered, "abc", "98.1") == (False, tampered.evalue)


def test_comparisons_reject_tensor_subclasses():
    import torch

    from minimoe.testing import assert_close, is_close

    class AllTrue(torch.Tensor):
        def all(self, *args, **kwargs):
            return torch.tensor(True)

    wrong = torch.zeros(3).as_subclass(AllTrue)
    assert not is_close(wrong, torch.ones(3))
    with pytest.raises(AssertionError, match="a AllTrue \\(a torch.Tensor subclass\\)"):
        assert_close(wrong, torch.ones(3))
    assert is_close(torch.nn.Parameter(torch.ones(3)), torch.ones(3))
