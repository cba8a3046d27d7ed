"""Check for chapter 00's warm-up: the router's top-k choice, `softmax_topk(logits_TE, k)`.

The reference is the "switch" gating of `minimoe.route` (softmax over the experts, then the k
largest probabilities, best first, not renormalised).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.routing import route

WARMUP = Exercise("00.1", "the router's top-k choice", library=(route,))


def _pack(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(prob_TK, expert_TK) as one float64 tensor (T, 2K), so one comparison covers both."""
    return torch.cat([pair[0].double(), pair[1].double()], dim=-1)


def _variants(k: int) -> list[tuple[str, Callable]]:
    def topk(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = p.topk(k, dim=-1)
        return values, indices

    def right(l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return topk(l.softmax(-1))

    def renormalised(l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, e = right(l)
        return p / p.sum(-1, keepdim=True), e

    def ascending(l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, e = right(l)
        return p.flip(-1), e.flip(-1)

    def smallest(l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return l.softmax(-1).topk(k, dim=-1, largest=False)

    return [
        ("forgot the softmax: the values are raw logits, not probabilities", lambda l: topk(l)),
        (
            "the softmax ran over the tokens (dim=0); it must run over the experts (dim=-1)",
            lambda l: topk(l.softmax(0)),
        ),
        (
            "used log_softmax; the task asks for probabilities (softmax)",
            lambda l: topk(l.log_softmax(-1)),
        ),
        (
            "renormalised the k probabilities to sum to 1; this exercise keeps the raw softmax "
            "values (renormalising is Mixtral's convention, chapter 02)",
            renormalised,
        ),
        ("the order is reversed: put the best expert first (descending)", ascending),
        ("picked the k *smallest* probabilities (largest=False); pick the largest", smallest),
    ]


def check_softmax_topk(softmax_topk: Callable) -> None:
    """Check `softmax_topk(logits_TE, k) -> (prob_TK, expert_TK)` against `minimoe.route`.

    Raises:
        AssertionError: naming the likely mistake when an answer is wrong.
    """
    g = make_generator(0)
    cases = [(5, 4, 2), (1, 3, 1), (7, 6, 3), (4, 5, 5), (0, 4, 2), (9, 8, 1)]
    for T, E, k in cases:
        logits_TE = torch.randn(T, E, generator=g) * 2.0
        case = f"logits of shape ({T}, {E}) with k={k}"
        out = WARMUP.call(softmax_topk, logits_TE.clone(), k, case=case)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            got = "None" if out is None else type(out).__name__
            raise WARMUP.fail(
                f"returned {got} on {case}; return a pair (prob_TK, expert_TK), as torch.topk "
                "returns (values, indices)"
            )
        prob_TK, expert_TK = out
        if isinstance(prob_TK, torch.Tensor) and not prob_TK.is_floating_point():
            raise WARMUP.fail(
                f"the first item returned on {case} holds integers: return (prob_TK, expert_TK), "
                "probabilities first, like torch.topk's (values, indices)"
            )
        WARMUP.expect_tensor(prob_TK, (T, k), torch.float32, case + " (prob_TK)")
        if not isinstance(expert_TK, torch.Tensor) or expert_TK.is_floating_point():
            raise WARMUP.fail(
                f"expert_TK on {case} must be a tensor of integer expert ids (torch.topk's "
                "indices), not probabilities"
            )
        if tuple(expert_TK.shape) != (T, k):
            raise WARMUP.fail(
                f"expert_TK has shape {tuple(expert_TK.shape)} on {case}, expected {(T, k)}"
            )
        ref = route(logits_TE, k, "switch")
        variants = [(hint, lambda l, fn=fn: _pack(fn(l))) for hint, fn in _variants(k)]
        diagnose(
            WARMUP,
            _pack((prob_TK, expert_TK)),
            _pack((ref.gate_TK, ref.expert_TK)),
            variants,
            (logits_TE,),
            case,
            atol=1e-6,
            rtol=1e-5,
        )
    WARMUP.passed(f"{len(cases)} cases")
