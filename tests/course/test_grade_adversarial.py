"""The grader against a hostile classroom, built from the shipped notebooks at test time.

Each submission is a careless or dishonest variant of solutions/ or exercises/ (chapters 00 and
01, the fastest to run). Most are graded in one run (`hostile`, two at a time); the ones whose
proof needs an order or a short budget in a second run (`ordered`, one at a time). Every tampering
variant starts from an unsolved or wrong answer, so a pass would mean the tampering worked.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest

from minimoe.course import grade as g
from minimoe.course.notebooks import has_tag
from minimoe.course.sandbox import SANDBOX_UID, can_run_as

ROOT = Path(__file__).resolve().parents[2]
TAMPERED = "check tampered with"

pytestmark = pytest.mark.slow


def shipped(kind: str, chapter: str) -> nbformat.NotebookNode:
    (path,) = (ROOT / kind).glob(f"{chapter}_*.ipynb")
    return nbformat.read(path, as_version=4)


def cell(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source)


def after_setup(nb, *sources: str):
    """The notebook with cells inserted right after its setup cell (cell 1)."""
    nb.cells[2:2] = [cell(s) for s in sources]
    return nb


def answer_of(nb, exercise: str):
    return next(
        c
        for c in nb.cells
        if has_tag(c, "answer") and c.metadata["minimoe"]["exercise"] == exercise
    )


def unsolved_00(*tamper: str):
    """Chapter 00 as handed out (its answer raises NotImplementedError), with `tamper` cells."""
    return after_setup(shipped("exercises", "00"), *tamper)


def solved_00_answer(body_before: str = "", body_after: str = ""):
    """Chapter 00 whose answer runs `body_before`, the solution, then `body_after` on its result."""
    nb = shipped("solutions", "00")
    answer = answer_of(nb, "00.1")
    answer.source = (
        "def softmax_topk(logits_TE, k):\n"
        + "".join(f"    {line}\n" for line in body_before.splitlines())
        + "    prob_TK, expert_TK = torch.topk(torch.softmax(logits_TE, -1), k, dim=-1)\n"
        + "".join(f"    {line}\n" for line in body_after.splitlines())
        + "    return prob_TK, expert_TK\n"
    )
    return nb


ALL_TRUE = """
class AllTrue(torch.Tensor):
    def all(self, *args, **kwargs):
        return torch.tensor(True)
    def __bool__(self):
        return True
"""

# name -> (notebook, what the rows must show); the variants of the hostile run
TAMPERING = {
    "replace_check_fn": unsolved_00(
        "import minimoe.course.checks\n"
        "minimoe.course.checks.check_softmax_topk = lambda fn: print('✓ Exercise 00.1: passed')"
    ),
    "patch_comparison": unsolved_00(
        "import minimoe.testing, minimoe.course.checks._common as c\n"
        "minimoe.testing.is_close = lambda *a, **k: True\n"
        "c.is_close = minimoe.testing.is_close\n"
        "c.diagnose = lambda *a, **k: None"
    ),
    "custom_exc": unsolved_00(
        "get_ipython().set_custom_exc((AssertionError, NotImplementedError), lambda *a, **k: None)"
    ),
    "input_transformer_blanks": unsolved_00(
        "def blank(lines):\n"
        "    return [] if any('check' in line for line in lines) else lines\n"
        "get_ipython().input_transformers_post.append(blank)"
    ),
    "input_transformer_fakes_pass": unsolved_00(
        "def fake(lines):\n"
        "    text = ''.join(lines)\n"
        "    return [\"print('✓ Exercise 00.1 (the router\\\\'s top-k choice): passed')\\n\"] "
        "if 'check' in text else lines\n"
        "get_ipython().input_transformers_cleanup.append(fake)"
    ),
    "ast_transformer": unsolved_00(
        "import ast\n"
        "class NoCalls(ast.NodeTransformer):\n"
        "    def visit_Expr(self, node):\n"
        "        return ast.Expr(ast.Constant(None))\n"
        "get_ipython().ast_transformers.append(NoCalls())"
    ),
    "patch_during_check": solved_00_answer(
        body_after="import minimoe.course.checks._common as c, minimoe.testing as t\n"
        "import sys\n"
        "for m in list(sys.modules.values()):\n"
        "    if getattr(m, '__name__', '').startswith('minimoe.course.checks'):\n"
        "        if hasattr(m, 'diagnose'): m.diagnose = lambda *a, **k: None\n"
        "        if hasattr(m, 'is_close'): m.is_close = lambda *a, **k: True\n"
        "t.is_close = lambda *a, **k: True\n"
        "prob_TK = prob_TK * 0"
    ),
    "tensor_subclass": solved_00_answer(
        body_before=ALL_TRUE.strip("\n").replace("\n", "\n"),
        body_after="prob_TK = (prob_TK * 0).as_subclass(AllTrue)\n"
        "expert_TK = expert_TK.as_subclass(AllTrue)",
    ),
    "patch_torch": unsolved_00(
        "torch.allclose = lambda *a, **k: True\n"
        "torch.equal = lambda *a, **k: True\n"
        "torch.Tensor.all = lambda self, *a, **k: torch.tensor(True)"
    ),
    "torch_function_mode": unsolved_00(
        "from torch.overrides import TorchFunctionMode\n"
        "class Yes(TorchFunctionMode):\n"
        "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
        "        return func(*args, **(kwargs or {}))\n"
        "Yes().__enter__()"
    ),
    "trace_function": unsolved_00("import sys\nsys.settrace(lambda *a: None)"),
    "event_callback": unsolved_00(
        "get_ipython().events.register('pre_run_cell', lambda info: None)"
    ),
    "patch_builtins": unsolved_00(
        "import builtins\n_isinstance = builtins.isinstance\n"
        "builtins.isinstance = lambda o, t: _isinstance(o, t)"
    ),
    "exit_in_check": solved_00_answer(body_after="import sys\nsys.exit(0)"),
    "import_hook": unsolved_00(
        "import sys\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        return None\n"
        "sys.meta_path.insert(0, Finder())"
    ),
}


def renamed_and_missing_01():
    """Chapter 01: answers 01.1 deleted (its wrong version typed into a new untagged cell) and
    01.2 renamed, with `loop_moe` bound to the library's earlier; every check cell deleted; 01.3
    as handed out; 01.4 solved."""
    nb = shipped("solutions", "01")
    unsolved = shipped("exercises", "01")
    a11, a12 = answer_of(nb, "01.1"), answer_of(nb, "01.2")
    untagged = cell("def ffn(x_ND, w1_FD, w2_DF, w3_FD, activation):\n    return x_ND")
    nb.cells[nb.cells.index(a11)] = untagged
    a12.source = a12.source.replace("def loop_moe(", "def loop_moe2(")
    answer_of(nb, "01.3").source = answer_of(unsolved, "01.3").source
    nb.cells = [c for c in nb.cells if not has_tag(c, "check")]
    return after_setup(nb, "from minimoe import loop_moe  # the library's")


def with_odd_metadata_00():
    """Chapter 00 solved, with null tags, null metadata fields and junk minimoe metadata."""
    text = nbformat.writes(shipped("solutions", "00"))
    raw = json.loads(text)
    raw["cells"][0]["metadata"] = {"tags": None}
    raw["cells"][1]["metadata"] = {"tags": None, "minimoe": "junk", "collapsed": None}
    raw["cells"][2]["metadata"] = None
    raw["cells"][5]["metadata"] = {"tags": [None, 3, "x"]}
    raw["metadata"] = {"minimoe": {"chapter": "not a chapter"}, "kernelspec": None}
    return json.dumps(raw)


def memory_limited_00():
    """Chapter 00 whose answer passes only if a 12 GiB allocation fails (the kernel's limit)."""
    return solved_00_answer(
        body_before="try:\n"
        "    hog = bytearray(12 * 2**30)\n"
        "except MemoryError:\n"
        "    pass\n"
        "else:\n"
        "    raise RuntimeError('no memory limit')"
    )


SHIPPED_SOLVED = ("02", "03", "04", "05", "06", "07", "08", "09", "10")


def solved(chapter: str) -> str:
    """The student handing in the shipped solution of `chapter` (names hold no digits)."""
    return "solved" + "abcdefghijklmnop"[int(chapter)]


@pytest.fixture(scope="module")
def solutions_copy(tmp_path_factory):
    path = tmp_path_factory.mktemp("solutions")
    for nb in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"):
        shutil.copy(nb, path / nb.name)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, solutions_copy):
    """The hostile classroom graded once, two notebooks at a time, with the reports as they stood
    after each notebook."""
    room = tmp_path_factory.mktemp("hostile")
    write = nbformat.write
    for name, nb in TAMPERING.items():
        write(nb, room / f"{name}_00_start.ipynb")
    write(renamed_and_missing_01(), room / "renamed_01_dense.ipynb")
    (room / "oddmeta_00_start.ipynb").write_text(with_odd_metadata_00(), encoding="utf-8")
    solved_01 = nbformat.writes(shipped("solutions", "01"))
    (room / "utf_sixteen_01_dense.ipynb").write_bytes(solved_01.encode("utf-16"))  # with its BOM
    (room / "latin1_00_start.ipynb").write_bytes(b'{"cells": [], "x": "caf\xe9"}')
    with zipfile.ZipFile(room / "zipped_00_start.ipynb", "w") as z:
        z.writestr("00_start_here.ipynb", nbformat.writes(shipped("solutions", "00")))
    (room / "cut_00_start.ipynb").write_text(solved_01[: len(solved_01) // 2], encoding="utf-8")
    write(memory_limited_00(), room / "memory_00_start.ipynb")
    write(
        after_setup(shipped("solutions", "00"), "import os\nos.kill(os.getppid(), 9)"),
        room / "killparent_00_start.ipynb",
    )
    write(
        after_setup(
            shipped("solutions", "00"), "import os\nos.killpg(os.getpgid(os.getppid()), 9)"
        ),
        room / "killgroup_00_start.ipynb",
    )
    write(shipped("solutions", "00"), room / "honest_00_start.ipynb")
    for chapter in SHIPPED_SOLVED:  # no false alarm on any chapter (01 is the UTF-16 one)
        (path,) = (ROOT / "solutions").glob(f"{chapter}_*.ipynb")
        shutil.copy(path, room / f"{solved(chapter)}_{path.name}")
    out = tmp_path_factory.mktemp("reports")
    seen: list[tuple[int, int, int]] = []  # (progress lines, JSON rows, CSV rows) after each

    def progress(line: str) -> None:
        if not line.startswith("graded "):
            return
        rows = json.loads((out / "r.json").read_text())
        with open(out / "r.csv", newline="") as f:
            seen.append((len(seen) + 1, len(rows), len(list(csv.DictReader(f)))))

    rows = g.grade(
        [room],
        solutions_copy,
        timeout=60,
        budget=300,
        memory_gb=8,
        jobs=2,
        json_out=out / "r.json",
        csv_out=out / "r.csv",
        progress=progress,
    )
    by_student: dict[str, dict[str, g.Row]] = {}
    for row in rows:
        by_student.setdefault(row.student, {})[row.exercise] = row
    return by_student, seen, out


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_every_tampering_class_fails_as_check_tampered_with(hostile, name):
    row = hostile[0][name]["00.1"]
    assert (row.passed, row.points, row.max_points) == (False, 0, 1)
    assert row.hint.startswith(TAMPERED), row.hint


def test_an_honest_notebook_beside_them_passes(hostile):
    row = hostile[0]["honest"]["00.1"]
    assert (row.passed, row.points, row.hint) == (True, 1, "")


@pytest.mark.parametrize("chapter", SHIPPED_SOLVED)
def test_every_shipped_solution_earns_every_point_under_the_guard(hostile, chapter):
    rows = hostile[0][solved(chapter)].values()
    assert rows and all(r.chapter == chapter for r in rows)
    assert [r.hint for r in rows if not r.passed] == []
    assert sum(r.points for r in rows) == sum(r.max_points for r in rows) > 0


def test_missing_or_renamed_answers_never_earn_the_mark(hostile):
    rows = hostile[0]["renamed"]
    assert rows["01.1"].hint == (
        "the answer cell of exercise 01.1 is missing (the cell tagged `answer` for it was "
        "deleted or untagged), so its check cannot run"
    )
    assert rows["01.2"].hint == (
        "AssertionError: Exercise 01.2: the answer cell does not define `loop_moe`; the "
        "`loop_moe` it would test comes from an earlier cell"
    )
    assert rows["01.3"].hint.startswith("AssertionError: Exercise 01.3 (parameter counting): not")
    assert (rows["01.4"].passed, rows["01.4"].points) == (True, 3)  # its deleted check restored
    assert sum(r.points for r in rows.values()) == 3


def test_every_submission_becomes_a_row(hostile):
    rows = hostile[0]
    assert {e: r.passed for e, r in rows["utf_sixteen"].items()} == dict.fromkeys(
        ["01.1", "01.2", "01.3", "01.4"], True
    )
    assert rows["oddmeta"]["00.1"].passed
    for student, reason in (
        ("zipped", "a zip archive, not a notebook"),
        ("cut", "not valid JSON (line"),
        ("latin1", "not UTF-8 text"),
    ):
        (row,) = rows[student].values()
        assert (row.exercise, row.points, row.max_points) == ("", 0, 0)
        assert row.hint.startswith(reason), row.hint


def test_reports_are_written_as_each_notebook_is_graded(hostile):
    _, seen, out = hostile
    submissions = len(hostile[0])
    assert [s[0] for s in seen] == list(range(1, submissions + 1))
    assert all(json_rows == csv_rows for _, json_rows, csv_rows in seen)
    assert [s[1] for s in seen] == sorted(s[1] for s in seen) and seen[0][1] >= 1
    final = json.loads((out / "r.json").read_text())
    assert len(final) == seen[-1][1] == sum(len(r) for r in hostile[0].values())


def test_a_kernel_that_kills_its_parent_or_group_fails_that_notebook_alone(hostile):
    for student in ("killparent", "killgroup"):
        row = hostile[0][student]["00.1"]
        if can_run_as(SANDBOX_UID):  # a kernel of another user may not signal the grader's
            assert (row.passed, row.hint) == (True, "")
        else:
            assert (row.passed, row.max_points) == (False, 1)
            assert row.hint.startswith("the notebook's grading process ended early"), row.hint
    assert hostile[0]["honest"]["00.1"].passed  # and the run went on


def test_each_kernel_has_a_memory_limit(hostile):
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != 8 * 2**30  # the grader's own is not
    row = hostile[0]["memory"]["00.1"]
    assert (row.passed, row.hint) == (True, "")


@pytest.fixture(scope="module")
def ordered(tmp_path_factory, solutions_copy):
    """One at a time, a short budget: a notebook that writes into the checks and the solutions,
    then a wrong one that those writes would have passed; and one with many slow cells."""
    room = tmp_path_factory.mktemp("ordered")
    solution_file = next(solutions_copy.glob("01_*.ipynb"))
    writer = after_setup(
        shipped("solutions", "01"),
        "import minimoe.course.checks.ch01_loop as c, os\n"
        "for path in (c.__file__, " + repr(str(solution_file)) + "):\n"
        "    try:\n"
        "        os.chmod(path, 0o644)\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('\\n')\n"
        "    except OSError as err:\n"
        "        print('refused:', err)\n"
        "with open(c.__file__, 'a') as f:\n"
        "    f.write('\\ndef check_loop_moe(fn):\\n    print(\"pass\")\\n')",
    )
    nbformat.write(writer, room / "a_writer_01_dense.ipynb")
    victim = shipped("solutions", "01")
    answer_of(victim, "01.2").source = answer_of(shipped("exercises", "01"), "01.2").source
    nbformat.write(victim, room / "b_victim_01_dense.ipynb")
    slow = after_setup(shipped("solutions", "00"), *["import time\ntime.sleep(3)"] * 15)
    nbformat.write(slow, room / "c_slow_00_start.ipynb")
    before = solution_file.read_bytes()
    rows = g.grade([room], solutions_copy, timeout=10, budget=40, jobs=1)
    by_student: dict[str, dict[str, g.Row]] = {}
    for row in rows:
        by_student.setdefault(row.student, {})[row.exercise] = row
    return by_student, before == solution_file.read_bytes()


def test_a_notebook_that_writes_into_the_checks_cannot_change_another_grade(ordered):
    rows, solutions_restored = ordered
    assert solutions_restored
    writer = rows["a_writer"]
    if can_run_as(SANDBOX_UID):  # kernels as another user: the writes were refused
        assert all(r.passed for r in writer.values())
    else:
        assert all(r.hint.startswith(f"{TAMPERED}: the notebook wrote") for r in writer.values())
        assert sum(r.points for r in writer.values()) == 0
    victim = rows["b_victim"]
    assert victim["01.2"].hint.startswith("AssertionError: Exercise 01.2 (the loop MoE): not")
    assert sum(r.points for r in victim.values()) == 7


def test_a_notebook_of_many_slow_cells_is_stopped_by_its_budget(ordered):
    row = ordered[0]["c_slow"]["00.1"]
    assert (row.passed, row.points) == (False, 0)
    assert "time budget of 40 s" in row.hint, row.hint


def test_pristine_copy_is_read_only_and_restored(tmp_path):
    from minimoe.course.sandbox import Pristine

    pristine = Pristine(tmp_path / "p")
    target = pristine.package / "course" / "checks" / "ch01_loop.py"
    assert not os.access(target, os.W_OK) or os.geteuid() == 0
    assert target.stat().st_mode & 0o222 == 0
    original = target.read_bytes()
    target.chmod(0o644)
    target.write_text("def check_loop_moe(fn):\n    pass\n")
    (pristine.package / "course" / "checks" / "extra.py").write_text("")
    assert pristine.changed() == [
        "minimoe/course/checks/ch01_loop.py",
        "minimoe/course/checks/extra.py",
    ]
    pristine.restore()
    assert pristine.changed() == [] and target.read_bytes() == original
