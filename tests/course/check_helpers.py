"""Helpers for the tests of the exercise checks (imported by tests/test_checks_*.py)."""

import pytest


def fails_with(check, answer, *words: str) -> str:
    """Run a check on a wrong answer; it must raise AssertionError containing every word."""
    with pytest.raises(AssertionError) as info:
        check(answer)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    return message


def not_done(*args, **kwargs):
    """An unanswered exercise, as the generated stub behaves."""
    raise NotImplementedError("Exercise: write this")


def assert_check_cells_match(notebooks: list[str], exercises: tuple, calls: str = "check_") -> None:
    """Each check cell of the given solutions/ notebooks calls a check (its source contains
    `calls`), and the cells' exercise numbers and titles are exactly those of `exercises`."""
    import json
    from pathlib import Path

    solutions = Path(__file__).resolve().parents[2] / "solutions"
    seen = {}
    for name in notebooks:
        for cell in json.loads((solutions / name).read_text())["cells"]:
            if "check" in cell["metadata"].get("tags", []):
                meta = cell["metadata"]["minimoe"]
                seen[meta["exercise"]] = meta["title"]
                assert calls in "".join(cell["source"]), f"{name}: {meta['exercise']}"
    assert seen == {ex.number: ex.title for ex in exercises}
