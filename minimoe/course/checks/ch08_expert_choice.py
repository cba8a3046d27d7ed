"""Checks for exercise 08.1, expert-choice routing (Zhou et al. 2022, arXiv 2202.09368), and
08.6, the investigation that measures how many tokens expert choice leaves without an expert.

08.1: the learner writes `expert_choice(probs_TE, capacity) -> (token_EC, gate_EC)`: each expert
e takes the `capacity` tokens of largest probs_TE[:, e], in decreasing order, ties to the lower
token index; gate_EC[e, c] = probs_TE[token_EC[e, c], e], differentiable. It is compared with
`minimoe.zoo.expert_choice`. Known wrong variants: the top-C taken over the experts of each token
(that is token choice), the C smallest instead of the largest, ties to the higher token index,
the tokens returned in index order instead of by affinity, the gates renormalised per expert,
and gates cut off from the graph.

08.6: the learner writes `smallest_capacity_factor(probs_TE, factors, threshold)`: the first
capacity factor of `factors` at which expert choice (C = `expert_choice_capacity`) leaves fewer
than `threshold` of the tokens with no expert, or None. Compared with the library's expert choice
on a balanced and a skewed batch. Known wrong variants: the share of (expert, slot) pairs instead
of tokens, `<=` instead of `<`, and the capacity without the ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.zoo import expert_choice as lib_expert_choice
from minimoe.zoo import expert_choice_capacity

CHOICE = Exercise("08.1", "expert-choice routing", library=(lib_expert_choice,))
COVERAGE = Exercise("08.6", "tokens left without an expert", library=())

ATOL, RTOL = 1e-6, 1e-5


def _pack(token_EC: torch.Tensor, gate_EC: torch.Tensor) -> torch.Tensor:
    """One (E, 2C) float64 tensor of ids then gates, so one comparison covers both."""
    return torch.cat([token_EC.double(), gate_EC.detach().double()], dim=1)


def _sorted_ids(probs_TE: torch.Tensor, C: int, *, descending: bool, ties_high: bool):
    """token_EC by a sort of each expert's column; ties to the higher index when ties_high."""
    T = probs_TE.shape[0]
    col_ET = probs_TE.detach().double().t()
    if ties_high:  # a stable sort of the reversed columns puts the higher index first
        idx = torch.sort(col_ET.flip(1), dim=1, descending=descending, stable=True).indices
        return (T - 1 - idx)[:, :C]
    return torch.sort(col_ET, dim=1, descending=descending, stable=True).indices[:, :C]


def _choice_variants(C: int) -> list[tuple[str, Callable]]:
    def form(p, *, descending=True, ties_high=False, index_order=False, renorm=False):
        token_EC = _sorted_ids(p, C, descending=descending, ties_high=ties_high)
        if index_order:
            token_EC = token_EC.sort(dim=1).values
        gate_EC = p.double().t().gather(1, token_EC)
        if renorm:
            gate_EC = gate_EC / gate_EC.sum(1, keepdim=True).clamp_min(1e-300)
        return _pack(token_EC, gate_EC)

    return [
        (
            "took the C SMALLEST affinities: each expert keeps the tokens that want it most, "
            "so sort each expert's column in decreasing order (descending=True)",
            lambda p: form(p, descending=False),
        ),
        (
            "ties go to the higher token index; the convention here is a stable descending sort, "
            "so of two tokens with the same affinity the EARLIER one comes first (torch.topk "
            "does not promise an order for ties: use torch.sort(..., stable=True))",
            lambda p: form(p, ties_high=True),
        ),
        (
            "the right tokens in the wrong order: each expert's tokens come in decreasing order "
            "of affinity, not sorted by token index",
            lambda p: form(p, index_order=True),
        ),
        (
            "the gates are renormalised to sum to 1 per expert; expert choice keeps the "
            "softmax probability itself: gate_EC[e, c] = probs_TE[token_EC[e, c], e]",
            lambda p: form(p, renorm=True),
        ),
    ]


_TOKEN_CHOICE = (
    "returned shape {got}, which is (T, C): you took the top-C over the EXPERTS of each token, "
    "which is token choice. In expert choice each EXPERT picks its top-C over the TOKENS: sort "
    "each column of probs_TE (dim=0), or each row of probs_TE.T"
)


def _choice_cases() -> list[tuple[str, torch.Tensor, int]]:
    g = make_generator(810)
    cases = []
    for T, E, cf in [(16, 4, 1.0), (12, 3, 2.0), (9, 5, 1.5), (6, 6, 6.0), (1, 2, 1.0)]:
        probs_TE = torch.randn(T, E, generator=g).mul(1.5).softmax(-1)
        C = expert_choice_capacity(T, E, cf)
        cases.append((f"T={T}, E={E}, C={C}", probs_TE, C))
    # ties: probabilities rounded to one decimal, so many tokens share an affinity
    probs_TE = torch.rand(10, 4, generator=g).mul(3).round().add(1)
    probs_TE = probs_TE / probs_TE.sum(-1, keepdim=True)
    cases.append(("T=10, E=4, C=4, with tied affinities", probs_TE, 4))
    cases.append(("T=0 tokens, E=3, C=0", torch.zeros(0, 3), 0))
    return cases


def check_expert_choice(expert_choice: Callable) -> None:
    """Check `expert_choice(probs_TE, capacity) -> (token_EC, gate_EC)` against the library."""
    cases = _choice_cases()
    for case, probs_TE, C in cases:
        T, E = probs_TE.shape
        probs = probs_TE.clone().requires_grad_(True)
        out = CHOICE.call(expert_choice, probs, C, case=case)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CHOICE.fail(f"return the pair (token_EC, gate_EC) on {case}")
        token_EC, gate_EC = out
        for name, t in (("token_EC", token_EC), ("gate_EC", gate_EC)):
            if not isinstance(t, torch.Tensor):
                raise CHOICE.fail(f"{name} is a {type(t).__name__} on {case}, not a tensor")
        if tuple(token_EC.shape) == (T, C) and T != E:
            raise CHOICE.fail(_TOKEN_CHOICE.format(got=(T, C)) + f" (on {case})")
        CHOICE.expect_tensor(token_EC, (E, C), torch.int64, case + " (token_EC)")
        CHOICE.expect_tensor(gate_EC, (E, C), probs.dtype, case + " (gate_EC)")
        want_token_EC, want_gate_EC = lib_expert_choice(probs_TE, C)
        diagnose(CHOICE, _pack(token_EC, gate_EC), _pack(want_token_EC, want_gate_EC),
                 _choice_variants(C), (probs_TE,), case, atol=ATOL, rtol=RTOL)  # fmt: skip
        if gate_EC.numel() and not gate_EC.requires_grad:
            raise CHOICE.fail(
                f"gate_EC carries no gradient on {case}: the router learns through these gates, "
                "so gather them from probs_TE (no .detach(), .item() or .numpy() on the way)"
            )
        if gate_EC.numel():
            (grad,) = torch.autograd.grad(gate_EC.sum(), probs, allow_unused=True)
            want = torch.zeros(T, E).index_put_(
                (want_token_EC.t().reshape(-1), torch.arange(E).repeat(C)),
                torch.ones(E * C),
                accumulate=True,
            )
            if grad is None or not torch.allclose(grad.double(), want.double()):
                raise CHOICE.fail(
                    f"the gradient of gate_EC.sum() w.r.t. probs_TE is wrong on {case}: each "
                    "chosen (token, expert) entry should receive exactly 1"
                )
    CHOICE.passed(f"{len(cases)} cases, ties and T = 0 included")


# --- 08.6 ------------------------------------------------------------------------------------


def unserved_fraction(probs_TE: torch.Tensor, capacity_factor: float) -> float:
    """The share of tokens that no expert picks under expert choice at this capacity factor."""
    T, E = probs_TE.shape
    if T == 0:
        return 0.0
    token_EC, _ = lib_expert_choice(probs_TE, expert_choice_capacity(T, E, capacity_factor))
    served_T = torch.zeros(T, dtype=torch.bool)
    served_T[token_EC.reshape(-1)] = True
    return (T - int(served_T.sum())) / T  # exact, so a share can equal the threshold


def _first_below(probs_TE, factors, threshold, measure, strict=True):
    for cf in factors:
        share = measure(probs_TE, cf)
        if share < threshold or (not strict and share <= threshold):
            return cf
    return None


def _same(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)


def _slot_share(probs_TE: torch.Tensor, cf: float) -> float:
    """A mistake: the share of the E*T (expert, token) pairs left unpicked."""
    T, E = probs_TE.shape
    C = expert_choice_capacity(T, E, cf)
    return (T - C) / T


def _floor_share(probs_TE: torch.Tensor, cf: float) -> float:
    """A mistake: C = floor(T * cf / E) instead of the ceiling."""
    T, E = probs_TE.shape
    C = min(T, math.floor(T * cf / E))
    token_EC, _ = lib_expert_choice(probs_TE, C)
    return (T - token_EC.unique().numel()) / T


def _coverage_cases() -> list[tuple[str, torch.Tensor, Sequence[float], float]]:
    g = make_generator(860)
    balanced = torch.randn(60, 8, generator=g).softmax(-1)
    # a skewed batch: every token prefers the first experts, so their picks overlap
    offset_E = torch.linspace(2.0, 0.0, 8)
    skewed = (torch.randn(60, 8, generator=g) + offset_E).softmax(-1)
    factors = [round(0.25 * i, 2) for i in range(1, 17)]
    return [
        ("a balanced batch (T=60, E=8), threshold 5%", balanced, factors, 0.05),
        ("a skewed batch (T=60, E=8), threshold 5%", skewed, factors, 0.05),
        ("a balanced batch (T=60, E=8), threshold 30%", balanced, factors, 0.30),
        ("a skewed batch, factors up to 1 only", skewed, factors[:4], 0.05),
    ]


def check_smallest_capacity_factor(smallest_capacity_factor: Callable) -> None:
    """Check `smallest_capacity_factor(probs_TE, factors, threshold) -> float | None`."""
    cases = _coverage_cases()
    for case, probs_TE, factors, threshold in cases:
        got = COVERAGE.call(smallest_capacity_factor, probs_TE.clone(), list(factors), threshold,
                            case=case)  # fmt: skip
        want = _first_below(probs_TE, factors, threshold, unserved_fraction)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if got is not None and not isinstance(got, (int, float)):
            raise COVERAGE.fail(f"return a capacity factor (a float) or None, got {got!r}")
        if _same(got, want):
            continue
        mistakes = [
            ("counted (expert, token) pairs, not tokens: a token is served when ANY expert "
             "picked it; mark the tokens in token_EC and count the unmarked ones",
             _first_below(probs_TE, factors, threshold, _slot_share)),
            ("used <= where the task says fewer than: the share must be strictly below the "
             "threshold", _first_below(probs_TE, factors, threshold, unserved_fraction, False)),
            ("the capacity must be rounded up, C = ceil(T * cf / E) "
             "(use expert_choice_capacity)",
             _first_below(probs_TE, factors, threshold, _floor_share)),
        ]  # fmt: skip
        for hint, value in mistakes:
            if _same(got, value) and not _same(value, want):
                raise COVERAGE.fail(f"returned {got} on {case}, expected {want}. Likely: {hint}")
        if want is None:
            raise COVERAGE.fail(
                f"returned {got} on {case}, but no factor in the list gets below the threshold: "
                "return None then"
            )
        raise COVERAGE.fail(f"returned {got} on {case}, expected {want}")
    COVERAGE.passed(f"{len(cases)} cases")
