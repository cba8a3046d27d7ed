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
