"""Checks for chapter 03, exercises 03.3 (the drop rate) and 03.4 (the output of a dropped token).

03.3 compares the learner's drop rate with `minimoe.routing_stats(...).drop_rate`; 03.4 compares
the MoE output and the residual block output x + MoE(x) with the float64 oracle
`minimoe.reference_moe` (after `minimoe.renormalize_survivors` when asked). Every case of 03.4 has a
token that lost all its slots and one that lost one of them. A wrong answer is matched against the
mistakes learners make (divided by T, counted tokens instead of slots, the kept fraction; a dropped
token zeroed in the block output, passed through as y = x or as gate × x, dropped slots not masked,
renormalised when not asked or not renormalised when asked) and the message names the mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from minimoe.capacity import renormalize_survivors
from minimoe.course.checks._common import Exercise, make_experts, make_routing, make_tokens
from minimoe.course.checks.ch03_capacity import diagnose_or_say
from minimoe.experts import ExpertParams
from minimoe.layer import MoELayer
from minimoe.metrics import routing_stats
from minimoe.reference import reference_moe
from minimoe.testing import assert_close

DROP_RATE = Exercise("03.3", "the drop rate", library=(routing_stats,))
DROPPED_OUTPUT = Exercise(
    "03.4", "the output of a dropped token", library=(renormalize_survivors, MoELayer)
)

ATOL, RTOL = 1e-5, 1e-4  # float32 answers against a float64 reference

# --- 03.3 the drop rate ----------------------------------------------------------------------


def _drop_rate_variants() -> list[tuple[str, Callable]]:
    def rate(fn: Callable) -> Callable:
        return lambda keep: torch.tensor(float(fn(keep)), dtype=torch.float64)

    return [
        (
            "divided by T, the number of tokens; the rate is per slot: dropped slots / (T*K)",
            rate(lambda keep: (~keep).sum() / keep.shape[0]),
        ),
        (
            "counted the tokens that lost a slot; count the dropped slots, over all T*K slots",
            rate(lambda keep: (~keep).any(1).float().mean()),
        ),
        (
            "counted the tokens that lost every slot; count the dropped slots, over all T*K",
            rate(lambda keep: (~keep).all(1).float().mean()),
        ),
        ("returned the kept fraction; the drop rate is 1 - kept", rate(lambda k: k.float().mean())),
        (
            "returned the number of dropped slots; divide it by T*K, the number of slots",
            rate(lambda keep: (~keep).sum()),
        ),
    ]


def _as_float(out: Any) -> float | None:
    if isinstance(out, bool) or out is None:
        return None
    if isinstance(out, torch.Tensor):
        return float(out) if out.numel() == 1 and out.dtype != torch.bool else None
    try:
        return float(out)
    except (TypeError, ValueError):
        return None


def check_drop_rate(drop_rate_fn: Callable) -> None:
    """Check `drop_rate(keep_TK) -> float` (the fraction of the T*K slots dropped) against
    `minimoe.routing_stats(...).drop_rate`."""
    # (T, E, K, drop probability, a token that lost every slot)
    cases = [(8, 4, 2, 0.3, True), (10, 4, 2, 0.2, False), (6, 4, 1, 0.5, False)]
    cases += [(4, 3, 3, 0.4, True), (5, 4, 2, 0.0, False), (1, 4, 2, 1.0, True)]
    cases += [(0, 4, 2, 0.0, False)]
    variants = _drop_rate_variants()
    for i, (T, E, K, drop, lost_all) in enumerate(cases):
        expert_TK, _, keep_TK = make_routing(T, E, K, seed=330 + i, drop=drop)
        if lost_all:
            keep_TK[0] = False
        if T > 1 and drop and K > 1:
            keep_TK[1] = torch.arange(K) > 0  # a token that lost only its first choice
        case = f"T={T}, K={K}, {int((~keep_TK).sum())} of {T * K} slots dropped"
        out = DROP_RATE.call(drop_rate_fn, keep_TK.clone(), case=case)
        value = _as_float(out)
        if value is None:
            got = "None (did you forget the `return`?)" if out is None else type(out).__name__
            raise DROP_RATE.fail(f"returned {got} on {case}; return the drop rate as a number")
        expected = routing_stats(expert_TK, E, keep_TK=keep_TK).drop_rate
        if T == 0 and value != value:
            raise DROP_RATE.fail(
                "returned nan for T=0 (0 / 0): with no slots nothing is dropped, return 0.0"
            )
        said = f"wrong value on {case}: you returned {value:.4g}, expected {expected:.4g}"
        diagnose_or_say(
            DROP_RATE,
            lambda said=said: said,
            torch.tensor(value, dtype=torch.float64),
            torch.tensor(expected, dtype=torch.float64),
            variants,
            (keep_TK,),
            case + f" (you returned {value:.4g}, expected {expected:.4g})",
            atol=1e-6,
            rtol=1e-6,
        )
    DROP_RATE.passed(f"{len(cases)} cases, incl. T=0, no drops, every slot dropped")


# --- 03.4 the output of a dropped token ------------------------------------------------------


def _f64(p: ExpertParams) -> ExpertParams:
    w3 = None if p.w3_EFD is None else p.w3_EFD.double()
    return ExpertParams(p.w1_EFD.double(), p.w2_EDF.double(), w3, p.activation)


def _block(x, expert, gate, keep, params, renormalize, *, mask=True, renorm=None, dropped=None,
           zero_lost=False, residual=True):  # fmt: skip
    """(y_TD, out_TD) packed as (T, 2D), in float64, with switches that make it a mistake."""
    x64, p64 = x.double(), _f64(params)
    gate64 = gate.double()
    renormalize = renormalize if renorm is None else renorm
    if renormalize:
        gate64 = renormalize_survivors(gate64, keep)
    y = reference_moe(x64, expert, gate64, p64, keep if mask else None)
    lost_T = ~keep.any(1)
    if dropped == "identity":  # a token that lost every slot gets y = x
        y = torch.where(lost_T[:, None], x64, y)
    elif dropped == "gate_x":  # each dropped slot contributes gate * x (HF's bug before #37123)
        y = y + (gate.double() * ~keep).sum(1, keepdim=True) * x64
    out = x64 + y if residual else y
    if zero_lost:
        out = torch.where(lost_T[:, None], torch.zeros_like(out), out)
    return torch.cat([y, out], dim=-1)


def _output_variants() -> list[tuple[str, Callable]]:
    def v(**kw: Any) -> Callable:
        return lambda *args: _block(*args, **kw)

    return [
        (
            "a token that lost every slot was set to 0 in the block output; it continues "
            "through the residual: out = x + 0 = x",
            v(zero_lost=True),
        ),
        (
            "a token that lost every slot got y = x; the MoE output of a dropped token is 0, "
            "the residual connection already carries x (out = x)",
            v(dropped="identity"),
        ),
        (
            "a dropped slot contributed gate * x (the identity scaled by its gate: HF "
            "transformers had this bug, fixed in PR #37123); a dropped slot contributes 0",
            v(dropped="gate_x"),
        ),
        (
            "ignored keep_TK: a dropped slot must contribute nothing (mask its gate, or pass "
            "keep_TK to the experts step)",
            v(mask=False),
        ),
        (
            "renormalize=True but the surviving gates were not rescaled: divide each token's "
            "kept gates by their sum, times the sum of all its gates (renormalize_survivors)",
            v(renorm=False),
        ),
        (
            "renormalised the surviving gates although renormalize=False: keep the gates as "
            "they are (a dropped slot's share is lost)",
            v(renorm=True),
        ),
        ("out must be the block output x + y, not y alone: add the residual", v(residual=False)),
    ]


def _pair(ex: Exercise, out: Any, T: int, D: int, dtype: torch.dtype, case: str) -> torch.Tensor:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = type(out).__name__ if not isinstance(out, (tuple, list)) else f"{len(out)} values"
        raise ex.fail(f"return 2 tensors (y_TD, out_TD) on {case}; got {got}")
    for name, item in zip(("y_TD", "out_TD"), out):
        ex.expect_tensor(item, (T, D), dtype, f"{case} ({name})")
    return torch.cat([out[0].double(), out[1].double()], dim=-1)


def check_dropped_output(block_fn: Callable) -> None:
    """Check `moe_block(x_TD, expert_TK, gate_TK, keep_TK, params, renormalize) -> (y_TD,
    out_TD)`: the MoE output and the residual block output x + y, against the oracle."""
    # (T, D, F, E, K, activation, drop probability, renormalize)
    cases = [
        (6, 8, 16, 4, 2, "swiglu", 0.3, False),
        (6, 8, 16, 4, 2, "swiglu", 0.3, True),
        (4, 6, 8, 3, 3, "gelu", 0.3, True),  # K = E
        (5, 100, 8, 4, 1, "gelu", 0.4, False),  # D = 100
        (1, 8, 8, 4, 2, "swiglu", 1.0, True),  # T = 1, its only token lost every slot
        (0, 8, 8, 4, 2, "swiglu", 0.0, False),
    ]
    variants = _output_variants()
    for i, (T, D, F_, E, K, act, drop, renormalize) in enumerate(cases):
        x_TD = make_tokens(T, D, seed=340 + i)
        params = make_experts(E, D, F_, act, seed=350 + i)
        expert_TK, gate_TK, keep_TK = make_routing(T, E, K, seed=360 + i, drop=drop)
        if T:
            keep_TK[0] = False  # token 0 lost every slot
        if T > 1 and K > 1:
            keep_TK[1] = torch.arange(K) > 0  # token 1 lost its first choice only
        args = (x_TD, expert_TK, gate_TK, keep_TK, params, renormalize)
        case = (
            f"T={T}, D={D}, E={E}, K={K}, {act}, {int((~keep_TK).sum())} dropped slots, "
            f"renormalize={renormalize}"
        )
        copies = (x_TD.clone(), expert_TK.clone(), gate_TK.clone(), keep_TK.clone(), params)
        out = DROPPED_OUTPUT.call(block_fn, *copies, renormalize, case=case)
        packed = _pair(DROPPED_OUTPUT, out, T, D, x_TD.dtype, case)
        if packed.isnan().any():
            raise DROPPED_OUTPUT.fail(
                f"NaN in your output on {case}: renormalising a token that lost every slot "
                "divides 0 by 0; guard the division (e.g. sum.clamp_min(1e-9)), its gates stay 0"
            )
        expected = _block(*args)
        diagnose_or_say(
            DROPPED_OUTPUT,
            partial(_which_differs, out, expected, D, case),
            packed,
            expected,
            variants,
            args,
            case,
            atol=ATOL,
            rtol=RTOL,
        )
    DROPPED_OUTPUT.passed(f"{len(cases)} cases, incl. fully dropped tokens, renormalising, T=0")


def _which_differs(out: tuple, expected: torch.Tensor, D: int, case: str) -> str:
    """The first of y_TD, out_TD that differs, with by how much."""
    for name, got, want in zip(("y_TD", "out_TD"), out, expected.split(D, dim=-1)):
        try:
            assert_close(got, want, atol=ATOL, rtol=RTOL, name=name)
        except AssertionError as error:
            return f"wrong values on {case}: {error}"
    return f"wrong values on {case}"
