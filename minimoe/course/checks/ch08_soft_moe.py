"""Check for exercise 08.2: soft MoE's dispatch and combine weights (Puigcerver et al. 2023,
"From Sparse to Soft Mixtures of Experts", arXiv 2308.00951, §2.1, eqs. 1-3).

The learner writes `soft_moe_weights(logits_TEC) -> (dispatch_TEC, combine_TEC)`:
dispatch is a softmax over the TOKENS (dim 0) for each slot (e, c), so each slot's input is a
weighted average of the tokens; combine is a softmax over all E*C slots jointly for each token,
so each token's output is a weighted average of the slots' outputs. Compared with
`minimoe.zoo.soft_moe_weights`. Known wrong variants: the two softmaxes swapped, the combine
normalised per expert (over C alone) instead of over all E*C slots, the dispatch over the slots
of each token, either one over the experts only, and exp / sum without the max (which overflows
on large logits and gives NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.zoo import soft_moe, soft_moe_weights

SOFT = Exercise("08.2", "soft-MoE dispatch and combine", library=(soft_moe_weights, soft_moe))

ATOL, RTOL = 1e-6, 1e-5


def _joint(l: torch.Tensor) -> torch.Tensor:
    """Softmax over all E*C slots of each token."""
    T, E, C = l.shape
    return l.reshape(T, E * C).softmax(-1).reshape(T, E, C)


def _pack(dispatch: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
    return torch.stack([dispatch.detach().double(), combine.detach().double()])


def _variants() -> list[tuple[str, Callable]]:
    def v(dispatch, combine):
        return lambda l: _pack(dispatch(l.double()), combine(l.double()))

    over_tokens = lambda l: l.softmax(0)  # noqa: E731
    return [
        ("the two softmaxes are swapped: DISPATCH normalises over the tokens (dim 0), so each "
         "slot averages the tokens; COMBINE normalises over the slots of each token",
         v(_joint, over_tokens)),
        ("the combine weights are normalised per expert (over C, dim 2); normalise over all E*C "
         "slots of a token jointly: reshape to (T, E*C), softmax, reshape back",
         v(over_tokens, lambda l: l.softmax(2))),
        ("the dispatch weights are normalised over the slots of each token; dispatch is a "
         "softmax over the TOKENS (dim 0), one distribution per slot (e, c)",
         v(lambda l: l.softmax(2), _joint)),
        ("the dispatch weights are normalised over the slots of each token (all E*C); dispatch "
         "is a softmax over the TOKENS (dim 0), one distribution per slot (e, c)",
         v(_joint, _joint)),
        ("a softmax over the experts (dim 1); dispatch runs over the tokens (dim 0), combine "
         "over all E*C slots of a token", v(over_tokens, lambda l: l.softmax(1))),
        ("the combine weights are a softmax over the tokens, as the dispatch weights are; "
         "combine normalises over all E*C slots of each token", v(over_tokens, over_tokens)),
    ]  # fmt: skip


def _cases() -> list[tuple[str, torch.Tensor]]:
    g = make_generator(820)
    cases = [
        (f"T={T}, E={E}, C={C}", torch.randn(T, E, C, generator=g) * s)
        for T, E, C, s in [(8, 4, 2, 1.0), (5, 3, 3, 2.0), (12, 2, 1, 1.0), (1, 4, 2, 1.0)]
    ]
    cases.append(("T=6, E=2, C=2 with large logits (up to ~300)",
                  torch.randn(6, 2, 2, generator=g) * 100))  # fmt: skip
    return cases


def check_soft_moe_weights(soft_moe_weights_fn: Callable) -> None:
    """Check `soft_moe_weights(logits_TEC) -> (dispatch_TEC, combine_TEC)` against the library."""
    cases = _cases()
    for case, logits_TEC in cases:
        logits = logits_TEC.clone().requires_grad_(True)
        out = SOFT.call(soft_moe_weights_fn, logits, case=case)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise SOFT.fail(f"return the pair (dispatch_TEC, combine_TEC) on {case}")
        dispatch, combine = out
        shape = tuple(logits_TEC.shape)
        SOFT.expect_tensor(dispatch, shape, logits.dtype, case + " (dispatch_TEC)")
        SOFT.expect_tensor(combine, shape, logits.dtype, case + " (combine_TEC)")
        if torch.isnan(dispatch).any() or torch.isnan(combine).any():
            raise SOFT.fail(
                f"NaN in your weights on {case}: exp of a large logit overflows to inf, and "
                "inf / inf is NaN. Subtract the max first, or use torch.softmax, which does"
            )
        want = soft_moe_weights(logits_TEC)
        diagnose(SOFT, _pack(dispatch, combine), _pack(*want), _variants(), (logits_TEC,), case,
                 atol=ATOL, rtol=RTOL)  # fmt: skip
        if not (dispatch.requires_grad and combine.requires_grad):
            raise SOFT.fail(
                f"the weights carry no gradient on {case}: soft MoE is trained end to end "
                "through them, so keep them in the graph (no .detach())"
            )
    SOFT.passed(f"{len(cases)} cases: dispatch over tokens, combine over all E*C slots")
