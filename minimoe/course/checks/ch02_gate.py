"""Check for chapter 02 (routing), exercise 02.1: the gating conventions. Shazeer's noisy top-k
in training and in evaluation (02.2) is checked in `ch02_noise`, the router gradient of the top-1
trap (02.3) in `ch02_trap`.

02.1 compares the learner's `gate(logits_TE, k, convention)` with `minimoe.route` for "switch",
"mixtral" and "shazeer" on seeded logits (K = 1, K = E, T = 1, T = 0, and logits with exact ties).
The experts are compared through their logits, so any choice among tied experts passes. A wrong
answer is matched against known wrong variants: Switch renormalised, Mixtral not renormalised,
Shazeer's softmax over all E logits or its mask filled with 0 instead of -inf, raw logits
renormalised, log-probabilities, experts in index order or ascending, a `>=` threshold that keeps
more than k experts on ties, the probabilities of all E experts returned instead of the gates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.routing import route
from minimoe.testing import is_close

GATE = Exercise("02.1", "the gating conventions", library=(route,))

CONVENTIONS = ("switch", "mixtral", "shazeer")
ATOL, RTOL = 1e-6, 1e-5


# --- 02.1 the gating conventions --------------------------------------------------------------


def _topk_mask(l: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(l, dtype=torch.bool).scatter(1, l.topk(k, dim=-1).indices, True)


def _gate_variants(convention: str, k: int) -> list[tuple[str, Callable]]:
    """(hint, logits -> gate_TK) for the mistakes a learner makes in one convention."""

    def switch(l):
        return l.softmax(-1).topk(k, dim=-1).values

    def renormalised(l):
        g = switch(l)
        return g / g.sum(-1, keepdim=True)

    def zero_masked(l):  # KeepTopK with 0 in place of -inf
        chosen_TK = l.topk(k, dim=-1).indices
        return torch.where(_topk_mask(l, k), l, 0.0).softmax(-1).gather(1, chosen_TK)

    def raw_renormalised(l):
        v = l.topk(k, dim=-1).values
        return v / v.sum(-1, keepdim=True)

    common = [
        (
            "these are log-probabilities (log_softmax); the gates are probabilities",
            lambda l: l.log_softmax(-1).topk(k, dim=-1).values,
        ),
        ("these are the raw logits; the gates come from a softmax", lambda l: l.topk(k, -1).values),
    ]
    if convention == "switch":
        return [
            (
                "Switch does not renormalise: its gates are p[top-k] of the softmax over all E "
                "experts and sum to less than 1. You renormalised them, or took the softmax over "
                "the k chosen logits only (which gives the same numbers)",
                renormalised,
            ),
            *common,
        ]
    if convention == "mixtral":
        return [
            (
                "forgot to renormalise: Mixtral divides the k chosen probabilities by their sum",
                switch,
            ),
            (
                "renormalised the raw logits; renormalise the softmax probabilities p[top-k]",
                raw_renormalised,
            ),
            *common,
        ]
    return [
        (
            "took the softmax over all E logits: Shazeer keeps the top-k logits, sets the others "
            "to -inf, and only then takes the softmax (over the k kept logits)",
            switch,
        ),
        (
            "masked the other logits with 0 instead of -inf: exp(0) = 1 still counts in the "
            "softmax's sum. Fill with float('-inf')",
            zero_masked,
        ),
        *common,
    ]


def _expect_pair(ex: Exercise, out: Any, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = "None" if out is None else type(out).__name__
        raise ex.fail(f"returned {got} on {case}; return the pair (expert_TK, gate_TK)")
    if not all(isinstance(t, torch.Tensor) for t in out):
        raise ex.fail(f"return two torch.Tensors (expert_TK, gate_TK) on {case}")
    expert_TK, gate_TK = out
    if expert_TK.is_floating_point() and not gate_TK.is_floating_point():
        raise ex.fail(f"returned (gate_TK, expert_TK) on {case}; return (expert_TK, gate_TK)")
    return expert_TK, gate_TK


def _check_experts(expert_TK: torch.Tensor, l: torch.Tensor, k: int, case: str) -> None:
    """The chosen experts hold the k largest logits, best first (any choice among ties)."""
    T, E = l.shape
    if expert_TK.is_floating_point() or expert_TK.dtype == torch.bool:
        raise GATE.fail(f"expert_TK must hold integer expert ids on {case}, got {expert_TK.dtype}")
    if tuple(expert_TK.shape) != (T, k):
        more = ""
        if expert_TK.dim() == 2 and expert_TK.shape[0] == T and expert_TK.shape[1] > k:
            more = (
                ": a threshold such as `logits >= kth largest` keeps more than k experts when "
                "logits tie; take exactly k with torch.topk"
            )
        raise GATE.fail(
            f"expert_TK has shape {tuple(expert_TK.shape)} on {case}, expected {(T, k)}{more}"
        )
    if T == 0:
        return
    e = expert_TK.long()
    if int(e.min()) < 0 or int(e.max()) >= E:
        raise GATE.fail(f"expert_TK on {case} holds ids outside 0 .. {E - 1}")
    if k > 1 and bool((e.sort(-1).values.diff(dim=-1) == 0).any()):
        raise GATE.fail(f"a token's k experts must be distinct on {case}")
    chosen_TK, best_TK = l.gather(1, e), l.topk(k, dim=-1).values
    if torch.equal(chosen_TK, best_TK):
        return
    if torch.equal(chosen_TK.sort(-1, descending=True).values, best_TK):
        if torch.equal(chosen_TK, best_TK.flip(-1)):
            raise GATE.fail(f"the experts on {case} are in ascending order: put the best first")
        raise GATE.fail(
            f"the right experts on {case}, but not best first (in expert-id order, as a mask "
            "and torch.nonzero give them?): order them by logit, largest first, as torch.topk does"
        )
    if torch.equal(e, l.softmax(0).topk(k, dim=-1).indices):
        raise GATE.fail(f"the softmax on {case} ran over the tokens (dim=0); use dim=-1 (experts)")
    if torch.equal(chosen_TK, l.topk(k, dim=-1, largest=False).values):
        raise GATE.fail(f"picked the k smallest logits on {case}; pick the largest")
    raise GATE.fail(
        f"wrong experts on {case}: the chosen logits are {chosen_TK.tolist()}, the k largest "
        f"are {best_TK.tolist()}"
    )


def _gate_cases() -> list[tuple[str, torch.Tensor, int]]:
    g = make_generator(20)
    cases = []
    for T, E, k in [(6, 8, 2), (5, 4, 1), (4, 4, 4), (1, 6, 3), (0, 4, 2), (12, 16, 4)]:
        cases.append((f"logits ({T}, {E}), k={k}", torch.randn(T, E, generator=g) * 2.0, k))
    ties = torch.randint(0, 3, (8, 5), generator=g).float()  # many exact ties
    cases.append(("logits (8, 5) with exact ties, k=2", ties, 2))
    return cases


def _call_gate(gate_fn: Callable, *args: Any, case: str) -> Any:
    """`GATE.call`, with a hint for the crash a `>=` threshold gives when logits tie."""
    try:
        return GATE.call(gate_fn, *args, case=case)
    except AssertionError as error:
        if "is invalid for input of size" in str(error.__cause__ or ""):
            raise AssertionError(
                f"{str(error).rstrip('.')}. Likely mistake: a threshold such as `logits >= kth "
                "largest` keeps more than k experts when logits tie; take exactly k with "
                "torch.topk"
            ) from None
        raise


def check_gate(gate_fn: Callable) -> None:
    """Check `gate(logits_TE, k, convention) -> (expert_TK, gate_TK)` for "switch", "mixtral" and
    "shazeer" against `minimoe.route`, values and gradients.

    Raises:
        AssertionError: naming the likely mistake when an answer is wrong.
    """
    for convention in CONVENTIONS:
        for name, logits_TE, k in _gate_cases():
            T, E = logits_TE.shape
            case = f"{convention!r}, {name}"
            out = _call_gate(gate_fn, logits_TE.clone(), k, convention, case=case)
            expert_TK, gate_TK = _expect_pair(GATE, out, case)
            if gate_TK.shape == (T, E) and k < E:
                raise GATE.fail(
                    f"gate_TK has shape {(T, E)} on {case}: those are probabilities of all E "
                    "experts; return the gates of the k chosen ones, shape (T, k)"
                )
            _check_experts(expert_TK, logits_TE, k, case)
            GATE.expect_tensor(gate_TK, (T, k), torch.float32, case + " (gate_TK)")
            ref = route(logits_TE, k, convention)
            variants = _gate_variants(convention, k)
            diagnose(GATE, gate_TK, ref.gate_TK, variants, (logits_TE,), case, atol=ATOL, rtol=RTOL)
        _check_gate_gradient(gate_fn, convention)
    GATE.passed(f"3 conventions x {len(_gate_cases())} cases, incl. ties, K=1, K=E, T=0")


def _check_gate_gradient(gate_fn: Callable, convention: str) -> None:
    """The gates must stay differentiable in the logits: the router learns through them."""
    logits = torch.randn(5, 6, generator=make_generator(21))
    case = f"{convention!r}, logits with requires_grad=True"
    leaf = logits.clone().requires_grad_(True)
    _, gate_TK = _expect_pair(GATE, GATE.call(gate_fn, leaf, 2, convention, case=case), case)
    if not gate_TK.requires_grad:
        raise GATE.fail(
            f"gate_TK is cut off from the logits' gradient on {case} (the router could not "
            "learn): avoid .detach(), .item(), torch.no_grad() and torch.tensor(...) on the gates"
        )
    R = torch.randn(5, 2, generator=make_generator(22))
    (grad,) = torch.autograd.grad((gate_TK * R).sum(), leaf)
    ref_leaf = logits.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((route(ref_leaf, 2, convention).gate_TK * R).sum(), ref_leaf)
    if not is_close(grad, expected, ATOL, RTOL):
        raise GATE.fail(
            f"the gates' values are right but their gradient differs from the library's on "
            f"{case}: compute the gates from the logits with differentiable torch ops"
        )
