"""The chapter 07 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import math

import pytest
import torch
from check_helpers import fails_with, not_done

from minimoe.checks.ch07_specialise import check_specialisation

# --- 07.2 the specialisation measure -------------------------------------------------------------


def specialisation(counts_CE, *, log=torch.log, what="mi", norm_axis=1, raw=False, skip_zeros=True,
                   wrong_marginals=False, guard=True, dtype=torch.float64):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    c = counts_CE.to(dtype)
    total = c.sum()
    if guard and total == 0:
        return 0.0, 0.0
    p = c if raw else c / total
    p_c, p_e = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    if wrong_marginals:
        p_c, p_e = p.sum(0), p.sum(1)
        p_c, p_e = p_c[:, None], p_e[None, :]

    def plogq(a, b):
        return torch.where(a > 0, a * log(b), 0.0).sum() if skip_zeros else (a * log(b)).sum()

    h_class = -plogq(p_c, p_c)
    h_expert = -plogq(p_e, p_e)
    mi = plogq(p, p / (p_c * p_e))
    if what == "conditional":
        mi = h_class - mi
    elif what == "joint":
        mi = -plogq(p, p)
    elif what == "h_class":
        mi = h_class
    h = h_class if norm_axis == 1 else h_expert
    if guard and h == 0:
        return float(mi), 0.0
    return float(mi), float(mi / h)


def spec_with(**kw):
    return lambda counts: specialisation(counts, **kw)


def test_specialisation_passes(capsys) -> None:
    check_specialisation(specialisation)
    check_specialisation(spec_with(dtype=torch.float32))  # float32 is precise enough
    check_specialisation(lambda c: tuple(torch.tensor(v) for v in specialisation(c)))  # 0-d tensors
    out = capsys.readouterr().out
    assert "✓ Exercise 07.2 (the specialisation measure): passed" in out


def test_specialisation_with_xlogy_passes() -> None:
    """The entropies written with torch.xlogy, a different right way."""

    def via_entropies(counts):
        p = counts.double() / max(int(counts.sum()), 1)

        def h(q):
            return float(-torch.xlogy(q, q).sum())

        h_c, h_e, h_ce = h(p.sum(1)), h(p.sum(0)), h(p)
        mi = h_c + h_e - h_ce
        return mi, (mi / h_c if h_c > 0 else 0.0)

    check_specialisation(via_entropies)


@pytest.mark.parametrize(
    "answer, words",
    [
        (spec_with(log=torch.log2), ["base 2", "nats"]),
        (spec_with(log=torch.log10), ["base 10"]),
        (spec_with(what="conditional"), ["H(class | expert)"]),
        (spec_with(raw=True), ["raw counts", "counts.sum()"]),
        (spec_with(norm_axis=0), ["H(expert)"]),
        (spec_with(what="joint"), ["joint entropy"]),
        (spec_with(what="h_class"), ["largest the MI can be"]),
        (spec_with(skip_zeros=False), ["0 * log(0)", "p > 0"]),
        (spec_with(guard=False), ["0 / 0", "return 0.0"]),
        (lambda c: torch.tensor(specialisation(c)), ["two numbers"]),
        (lambda c: specialisation(c)[0], ["two numbers"]),
        (lambda c: None, ["forget the `return`"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_specialisation_wrong(answer, words) -> None:
    fails_with(check_specialisation, answer, "Exercise 07.2", *words)


def test_specialisation_wrong_axes_crash_names_the_marginals() -> None:
    """Summing the marginals over the wrong axes fails on a 5 x 4 table: the hint says which."""
    fails_with(check_specialisation, spec_with(wrong_marginals=True), "p.sum(1)", "(C, 1)")


def test_specialisation_wrong_axes_on_a_square_table() -> None:
    """On a square table the wrong marginals run and give wrong values: named as well."""
    import minimoe.checks.ch07_specialise as ch

    square = [case for case in ch._cases() if case[1].shape[0] == case[1].shape[1]]
    wrong = spec_with(wrong_marginals=True)
    for case, counts in square[:1]:
        got = torch.tensor(wrong(counts), dtype=torch.float64)
        hints = [h for h, fn in ch._variants() if ch.is_close(got, fn(counts), ch.ATOL, ch.RTOL)]
        assert any("wrong axes" in h for h in hints), case


def test_specialisation_unknown_mistake_reports_both_values() -> None:
    message = fails_with(check_specialisation, lambda c: (1.01 * specialisation(c)[0], 0.5))
    assert "expected (mi=" in message


def test_specialisation_negative_mi_is_named() -> None:
    def flipped(counts):
        mi, norm = specialisation(counts)
        return -mi - 0.1, norm

    fails_with(check_specialisation, flipped, "never negative")


def test_reference_values_by_hand() -> None:
    """The check's reference on its first diagonal case: MI = H(class)."""
    counts = torch.diag(torch.tensor([40, 25, 10, 5]))
    p = torch.tensor([40, 25, 10, 5]) / 80
    h = -sum(float(q) * math.log(float(q)) for q in p)
    mi, norm = specialisation(counts)
    assert mi == pytest.approx(h) and norm == pytest.approx(1.0)
