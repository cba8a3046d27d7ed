"""The README's code runs, and its two commands are the ones the Makefile and CI provide."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_python_blocks_run(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README shows the library in code"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    capacity, drop_rate, diff = capsys.readouterr().out.split()[-3:]
    assert int(capacity) == 20  # ceil(64 / 8 * 1.25 * 2)
    assert 0.0 <= float(drop_rate) < 1.0 and diff == "True"


def test_two_commands_are_wired():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make lab" in readme and "make test" in readme
    assert re.search(r"^lab:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "notebooks/00_start_here.ipynb" in makefile
    assert "-c constraints.txt" in makefile
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()


def test_lab_installs_the_course_and_test_adds_the_test_tools():
    """`make lab` installs the `course` extra only; `make test` adds the `test` extra; a stamp each."""
    makefile = (ROOT / "Makefile").read_text()

    def recipe(target: str) -> str:
        match = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n)*)", makefile, flags=re.M)
        assert match, f"no target {target}"
        return match.group(1) + "\n" + match.group(2)

    course, tests = recipe("$(COURSE_STAMP)"), recipe("$(TEST_STAMP)")
    assert '-e ".[course]"' in course and "test" not in course
    assert '-e ".[course,test]"' in tests and "$(COURSE_STAMP)" in tests
    assert "$(COURSE_STAMP)" in recipe("lab") and "-m minimoe lab" in recipe("lab")
    assert "$(TEST_STAMP)" in recipe("lint") and "lint" in recipe("test")
