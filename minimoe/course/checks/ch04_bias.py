"""Check for exercise 04.4: aux-loss-free bias balancing (Wang et al. 2024, arXiv 2408.15664;
DeepSeek-V3, arXiv 2412.19437 §2.1.2).

The learner writes two functions:

- `update_bias(bias_E, expert_TK, gate_TK, rate) -> new bias_E`: b_e + rate * sign(mean_load -
  load_e), where load_e counts the slots routed to e (compared with `minimoe.Router.update_bias`;
  the gates are given because a router has them at hand, and the update must not use them);
- `biased_topk(logits_TE, bias_E, k) -> (expert_TK, gate_TK)`: s = sigmoid(l), the k experts of
  largest s + b, gates s[chosen] / sum (compared with `minimoe.route(..., "deepseek_v3")`).

Known wrong variants: the sign flipped, the loads taken from the gate weights instead of the
counts, rate * (mean - load) without the sign, bincount without minlength, the bias added to the
gate weights (selection only!), softmax instead of sigmoid, no renormalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.router import Router
from minimoe.routing import route

BIAS = Exercise("04.4", "the bias-balancing update", library=(Router.update_bias, route))


def _reference_update(bias_E: torch.Tensor, expert_TK: torch.Tensor, rate: float) -> torch.Tensor:
    router = Router(1, bias_E.numel(), selection_bias=True)
    router.bias_E.copy_(bias_E)
    router.update_bias(torch.bincount(expert_TK.reshape(-1), minlength=bias_E.numel()), rate)
    return router.bias_E.clone()


def _update_variants() -> list[tuple[str, Callable]]:
    def form(b, e, gate_TK, rate, *, flip=False, use_gates=False, no_sign=False, share=False):
        E = b.numel()
        if use_gates:
            load = torch.zeros(E, dtype=torch.float64).index_add_(
                0, e.reshape(-1), gate_TK.reshape(-1).double()
            )
        else:
            load = torch.bincount(e.reshape(-1), minlength=E).double()
        if share:
            load = load / load.sum()
        step = load.mean() - load
        step = step if no_sign else torch.sign(step)
        return b.double() + (-1 if flip else 1) * rate * step

    return [
        (
            "the sign is flipped: an expert with MORE than the mean load must get a SMALLER "
            "bias (b_e += rate * sign(mean_load - load_e)), so fewer tokens pick it",
            lambda b, e, g, r: form(b, e, g, r, flip=True),
        ),
        (
            "the load is the sum of the gate weights; count the routed slots instead "
            "(torch.bincount of expert_TK): the update balances how many tokens each expert gets",
            lambda b, e, g, r: form(b, e, g, r, use_gates=True),
        ),
        (
            "the step is rate * (mean_load - load_e); take its sign: every expert moves by "
            "exactly rate, whatever the size of its imbalance",
            lambda b, e, g, r: form(b, e, g, r, no_sign=True),
        ),
    ]


def _topk_variants(k: int) -> list[tuple[str, Callable]]:
    def form(l, b, *, gate_from_biased=False, softmax=False, renorm=True, select_unbiased=False):
        s = l.double().softmax(-1) if softmax else torch.sigmoid(l.double())
        expert = (s if select_unbiased else s + b.double()).topk(k, dim=-1).indices
        g = (s + b.double() if gate_from_biased else s).gather(1, expert)
        g = g / g.sum(-1, keepdim=True) if renorm else g
        return torch.cat([expert.double(), g], dim=-1)

    return [
        (
            "the gate weights come from s + b; the bias is for the SELECTION only: gather the "
            "unbiased s = sigmoid(logits) at the chosen experts",
            lambda l, b: form(l, b, gate_from_biased=True),
        ),
        ("the bias was not used to choose: pick the top-k of s + b",
         lambda l, b: form(l, b, select_unbiased=True)),
        ("used softmax; this router scores each expert with a sigmoid",
         lambda l, b: form(l, b, softmax=True)),
        ("forgot to renormalise: divide the k gathered scores by their sum",
         lambda l, b: form(l, b, renorm=False)),
    ]  # fmt: skip


def _check_update(update_bias: Callable) -> int:
    cases = [  # (T, E, K, rate, collapsed)
        (32, 4, 2, 1e-2, False),
        (24, 6, 1, 1e-3, True),
        (10, 5, 2, 0.1, True),  # experts 3 and 4 get nothing
        (1, 3, 3, 1e-2, False),  # K = E: every load equals the mean
    ]
    for i, (T, E, K, rate, collapsed) in enumerate(cases):
        g = make_generator(70 + i)
        expert_TK = torch.rand(T, E, generator=g).argsort(-1)[:, :K]
        if collapsed:
            expert_TK = torch.rand(T, 3, generator=g).argsort(-1)[:, :K]  # only experts 0..2
        gate_TK = torch.rand(T, K, generator=g).softmax(-1)
        bias_E = torch.randn(E, generator=g) * 0.01
        case = f"T={T}, E={E}, K={K}, rate={rate:g}" + (
            ", experts past 2 unused" if collapsed else ""
        )
        args = (bias_E.clone(), expert_TK.clone(), gate_TK.clone(), rate)
        try:
            out = BIAS.call(update_bias, *args, case=case)
        except AssertionError as error:
            if "must match the size" in str(error.__cause__ or ""):
                raise BIAS.fail(
                    f"the loads do not have E entries on {case}: torch.bincount needs "
                    "minlength=E, or experts that got no slot (the last ones) are missing"
                ) from None
            raise
        BIAS.expect_tensor(out, (E,), bias_E.dtype, case + " (the new bias_E)")
        expected = _reference_update(bias_E, expert_TK, rate)
        diagnose(BIAS, out, expected, _update_variants(), (bias_E, expert_TK, gate_TK, rate),
                 case, atol=1e-7, rtol=1e-6)  # fmt: skip
    return len(cases)


def _check_topk(biased_topk: Callable) -> int:
    cases = [(8, 4, 2, 0.5), (6, 6, 1, 1.0), (5, 4, 4, 0.3), (1, 5, 2, 2.0)]  # (T, E, K, bias size)
    for i, (T, E, K, size) in enumerate(cases):
        g = make_generator(80 + i)
        logits_TE = torch.randn(T, E, generator=g)
        bias_E = torch.randn(E, generator=g) * size
        case = f"T={T}, E={E}, K={K}, a bias of size {size:g}"
        out = BIAS.call(biased_topk, logits_TE.clone(), bias_E.clone(), K, case=case)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise BIAS.fail(f"biased_topk must return (expert_TK, gate_TK) on {case}")
        expert_TK, gate_TK = out
        if not isinstance(expert_TK, torch.Tensor) or expert_TK.is_floating_point():
            raise BIAS.fail(
                f"biased_topk's first result on {case} must be integer expert ids (expert_TK)"
            )
        BIAS.expect_tensor(gate_TK, (T, K), torch.float32, case + " (gate_TK)")
        if tuple(expert_TK.shape) != (T, K):
            raise BIAS.fail(f"expert_TK has shape {tuple(expert_TK.shape)} on {case}, not {(T, K)}")
        ref = route(logits_TE, K, "deepseek_v3", bias_E=bias_E)
        got = torch.cat([expert_TK.double(), gate_TK.double()], dim=-1)
        expected = torch.cat([ref.expert_TK.double(), ref.gate_TK.double()], dim=-1)
        diagnose(BIAS, got, expected, _topk_variants(K), (logits_TE, bias_E), case,
                 atol=1e-6, rtol=1e-5)  # fmt: skip
    return len(cases)


def check_bias_balancing(update_bias: Callable, biased_topk: Callable) -> None:
    """Check `update_bias(bias_E, expert_TK, gate_TK, rate) -> bias_E` and
    `biased_topk(logits_TE, bias_E, k) -> (expert_TK, gate_TK)` against the library."""
    n = _check_update(update_bias) + _check_topk(biased_topk)
    BIAS.passed(f"{n} cases: the update and the selection-only bias")
