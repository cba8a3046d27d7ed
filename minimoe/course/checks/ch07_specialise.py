"""Check for exercise 07.2: the specialisation measure, mutual information between class and expert.

The learner writes `specialisation(counts_CE) -> (mi, mi_over_h_class)`: the plug-in mutual
information in nats between the character class (rows) and the chosen expert (columns) of a
contingency table, and the same divided by H(class). The reference is `minimoe.lm.specialise`.
A wrong answer is matched against known mistakes: the log in base 2 or 10, the conditional
entropy H(class | expert) instead of the MI, raw counts used as probabilities, the normalisation
by H(expert) (swapped axes), the marginals summed over the wrong axis, the joint entropy, and
0 · log 0 evaluated as NaN. Logs of two bases mixed (the MI in bits, H(class) in nats, or the
other way round) are recognised by the ratio they leave, ln 2 or ln 10, wherever it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise, make_generator
from minimoe.lm.specialise import (
    class_entropy,
    measure_specialisation,
    mutual_information,
    normalised_mutual_information,
)
from minimoe.testing import is_close


def _explain_crash(error: Exception, args: tuple) -> str:
    """A broadcasting crash gets the marginals' hint."""
    return f". Likely mistake: {_MARGINALS}" if "must match the size" in str(error) else ""


SPECIALISE = Exercise(
    "07.2",
    "the specialisation measure",
    library=(mutual_information, normalised_mutual_information, measure_specialisation),
    explain=_explain_crash,
)

ATOL, RTOL = 1e-6, 1e-5  # a float32 answer is fine

_MARGINALS = (
    "p(c) = p.sum(1) sums over the experts, shape (C, 1) with keepdim=True; p(e) = p.sum(0) "
    "sums over the classes, shape (1, E); then p(c) * p(e) broadcasts to (C, E)"
)


def _reference(counts_CE: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [mutual_information(counts_CE), normalised_mutual_information(counts_CE)],
        dtype=torch.float64,
    )


def _plogq(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum of p * log(q) over the cells where p > 0."""
    return torch.where(p > 0, p * q.clamp_min(1e-300).log(), torch.zeros_like(p)).sum()


def _h(p: torch.Tensor) -> float:
    return float(-_plogq(p, p))


def _variants() -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    def pair(mi: float, norm: float) -> torch.Tensor:
        return torch.tensor([mi, norm], dtype=torch.float64)

    def parts(counts: torch.Tensor):
        c = counts.double()
        p = c / c.sum()
        return c, p, p.sum(1, keepdim=True), p.sum(0, keepdim=True)

    def log_base(base: float, *, mi: bool = True, h: bool = True):
        """The MI and/or H(class) computed with log_base instead of the natural log."""

        def wrong(counts):
            ref = _reference(counts)
            mi_wrong = float(ref[0]) / (math.log(base) if mi else 1.0)
            scale = (1.0 / math.log(base) if mi else 1.0) / (1.0 / math.log(base) if h else 1.0)
            return pair(mi_wrong, float(ref[1]) * scale)

        return wrong

    def conditional(counts):  # H(class | expert) = H(class) - I
        h_c, mi = class_entropy(counts), mutual_information(counts)
        return pair(h_c - mi, (h_c - mi) / h_c)

    def raw_counts(counts):  # the formula evaluated on counts, not probabilities
        c, _, _, _ = parts(counts)
        nc, ne = c.sum(1, keepdim=True), c.sum(0, keepdim=True)
        mi = float(_plogq(c, c / (nc * ne)))
        return pair(mi, mi / _h(nc))

    def by_h_expert(counts):  # normalised by the entropy of the other axis
        _, _, _, p_e = parts(counts)
        return pair(mutual_information(counts), mutual_information(counts) / _h(p_e))

    def swapped_marginals(counts):  # p(c) summed over the classes, p(e) over the experts
        _, p, p_c, p_e = parts(counts)
        mi = float(_plogq(p, p / (p_e.t() * p_c.t())))  # (E, 1) * (1, C): runs only if C = E
        return pair(mi, mi / _h(p_e))

    def joint_entropy(counts):
        _, p, p_c, _ = parts(counts)
        return pair(_h(p), _h(p) / _h(p_c))

    def h_class(counts):
        h = class_entropy(counts)
        return pair(h, 1.0)

    return [
        ("the log is in base 2 (bits); the measure is in nats: use torch.log", log_base(2)),
        ("the log is in base 10; the measure is in nats: use torch.log", log_base(10)),
        (
            "logs of two bases mixed: the MI is in bits (log2) but H(class) in nats, so both "
            "values are 1/ln 2 = 1.443 times too large; use the natural log, torch.log, in both",
            log_base(2, h=False),
        ),
        (
            "logs of two bases mixed: the MI is in nats but H(class) in bits (log2), so the "
            "normalised value is ln 2 = 0.693 times what it should be; use torch.log in both",
            log_base(2, mi=False),
        ),
        (
            "logs of two bases mixed: the MI is in base 10 but H(class) in nats, so both values "
            "are 1/ln 10 = 0.434 times what they should be; use torch.log in both",
            log_base(10, h=False),
        ),
        (
            "logs of two bases mixed: the MI is in nats but H(class) in base 10, so the "
            "normalised value is ln 10 = 2.303 times what it should be; use torch.log in both",
            log_base(10, mi=False),
        ),
        (
            "that is the conditional entropy H(class | expert), what is left to guess; the MI is "
            "what the expert tells, H(class) - H(class | expert)",
            conditional,
        ),
        (
            "raw counts used as probabilities: divide the table by its total first, "
            "p(c, e) = counts / counts.sum()",
            raw_counts,
        ),
        (
            "normalised by H(expert); the measure divides by H(class), the entropy of the rows "
            "(p(c) sums over the experts, axis 1)",
            by_h_expert,
        ),
        (f"the marginals are summed over the wrong axes: {_MARGINALS}", swapped_marginals),
        ("that is the joint entropy H(class, expert), not the mutual information", joint_entropy),
        ("that is H(class), the largest the MI can be, not the MI itself", h_class),
    ]


def _table(C: int, E: int, seed: int, *, zeros: float = 0.3, scale: int = 50) -> torch.Tensor:
    g = make_generator(seed)
    counts = torch.randint(1, scale, (C, E), generator=g)
    return counts * (torch.rand(C, E, generator=g) >= zeros)


def _cases() -> list[tuple[str, torch.Tensor]]:
    diagonal = torch.diag(torch.tensor([40, 25, 10, 5]))
    independent = torch.outer(torch.tensor([4, 3, 2, 1, 1]), torch.tensor([1, 2, 2, 3]))
    with_empty_class = _table(5, 4, seed=73)
    with_empty_class[2] = 0
    return [
        ("a 5 x 4 table with empty cells", _table(5, 4, seed=71)),
        ("a 5 x 5 table (as many experts as classes)", _table(5, 5, seed=72, zeros=0.2)),
        ("each class on an expert of its own (MI = H(class))", diagonal),
        ("class and expert independent (MI = 0)", independent),
        ("a table with a class that never occurs", with_empty_class),
        ("a single class (H(class) = 0: the normalised value is 0)", torch.tensor([[3, 0, 5]])),
        ("a single byte", torch.tensor([[0, 0], [0, 1], [0, 0]])),
        ("an empty table (no bytes: both values 0)", torch.zeros(5, 4, dtype=torch.long)),
    ]


def _as_pair(out: Any, case: str) -> torch.Tensor:
    if out is None:
        raise SPECIALISE.fail(f"returned None on {case}: did you forget the `return`?")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise SPECIALISE.fail(
            f"return two numbers (mi, mi_over_h_class) on {case}; got {type(out).__name__}"
        )
    values = []
    for item in out:
        if isinstance(item, torch.Tensor) and item.numel() == 1:
            item = item.item()
        if not isinstance(item, (int, float)):
            raise SPECIALISE.fail(
                f"return two numbers (floats or 0-d tensors) on {case}, got a "
                f"{type(item).__name__}{tuple(item.shape) if isinstance(item, torch.Tensor) else ''}"
            )
        values.append(float(item))
    return torch.tensor(values, dtype=torch.float64)


def _call(fn: Callable, counts: torch.Tensor, case: str) -> Any:
    """Run the learner's function; a broadcasting crash gets the marginals' hint."""
    return SPECIALISE.call(fn, counts.clone(), case=case)


_RATIOS = (  # (factor, what a value off by it means)
    (1 / math.log(2), "1/ln 2 = 1.443 times too large: a log2 (bits) where the measure is in nats"),
    (math.log(2), "ln 2 = 0.693 times what it should be: a log2 (bits) in the denominator"),
    (1 / math.log(10), "1/ln 10 = 0.434 times what it should be: a log10 where nats are meant"),
    (math.log(10), "ln 10 = 2.303 times what it should be: a log10 in the denominator"),
)


def _log_ratio(out: torch.Tensor, expected: torch.Tensor) -> str:
    """'the MI is ... ' when a value is off by exactly a change of log base, else ''."""
    for i, name in enumerate(("the MI", "the normalised value")):
        if abs(float(expected[i])) < 1e-9:
            continue
        ratio = float(out[i]) / float(expected[i])
        for factor, meaning in _RATIOS:
            if math.isclose(ratio, factor, rel_tol=1e-4):
                return (
                    f"{name} is {meaning}. Use the natural log (torch.log) for the MI and for "
                    "H(class) alike; logs of two bases mixed leave exactly this factor"
                )
    return ""


def check_specialisation(specialisation_fn: Callable) -> None:
    """Check `specialisation(counts_CE) -> (mi, mi_over_h_class)` against `minimoe.lm.specialise`."""
    variants = _variants()
    for case, counts in _cases():
        out = _as_pair(_call(specialisation_fn, counts, case), case)
        expected = _reference(counts)
        if is_close(out, expected, ATOL, RTOL):
            continue
        if torch.isnan(out).any():
            zero_cells = bool((counts == 0).any())
            raise SPECIALISE.fail(
                f"NaN on {case}. Likely mistake: "
                + (
                    "an empty cell gives 0 * log(0) = NaN; by convention it counts 0: keep only "
                    "the cells with p > 0 (or use torch.xlogy)"
                    if zero_cells and counts.sum() > 0 and class_entropy(counts) > 0
                    else "0 / 0: when the table is empty or H(class) = 0, return 0.0"
                )
            )
        for hint, wrong in variants:
            try:
                candidate = wrong(counts)
            except Exception:  # a variant that cannot run on this input does not apply here
                continue
            if is_close(out, candidate, ATOL, RTOL) and not is_close(
                candidate, expected, ATOL, RTOL
            ):
                raise SPECIALISE.fail(f"wrong values on {case}. Likely mistake: {hint}")
        log_ratio = _log_ratio(out, expected)
        if log_ratio:
            raise SPECIALISE.fail(f"wrong values on {case}. Likely mistake: {log_ratio}")
        if out[0] < -ATOL:
            raise SPECIALISE.fail(
                f"a negative MI ({out[0]:.4g}) on {case}: the MI is never negative; check the "
                "sign and that p(c) p(e) is in the denominator"
            )
        raise SPECIALISE.fail(
            f"wrong values on {case}: got (mi={out[0]:.6g}, normalised={out[1]:.6g}), expected "
            f"(mi={expected[0]:.6g}, normalised={expected[1]:.6g})"
        )
    SPECIALISE.passed(f"{len(_cases())} tables, incl. independent, deterministic and empty")
