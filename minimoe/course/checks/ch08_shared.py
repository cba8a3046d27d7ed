"""Check for exercise 08.4: the forward of shared plus routed experts (DeepSeekMoE, Dai et al.
2024, arXiv 2401.06066, §3.2, eqs. 9-11).

The learner writes `shared_routed_forward(x_TD, shared, expert_TK, gate_TK, routed) -> y_TD`:
every token goes through every shared expert with weight 1, and through its K routed experts
weighted by their gates:

    y[t] = sum_s FFN_s(x[t]) + sum_k gate[t, k] * FFN_{expert[t, k]}(x[t])

Compared with `minimoe.zoo.shared_routed_forward`, outputs and the gradient w.r.t. the gates.
Known wrong variants: the shared experts' output forgotten, the shared experts averaged instead
of summed, only the first shared expert used, the routed gates ignored, the routed experts taken
by slot k instead of by their id expert_TK[t, k], and the input x added back (the residual belongs
to the block, not to this layer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import (
    Exercise,
    diagnose,
    make_experts,
    make_routing,
    make_tokens,
)
from minimoe.experts import ExpertParams, expert_ffn
from minimoe.zoo import shared_routed_forward

SHARED = Exercise("08.4", "shared plus routed experts", library=(shared_routed_forward,),
                  weights=True)  # fmt: skip

ATOL, RTOL = 1e-5, 1e-4


def _forward(x, shared, expert_TK, gate_TK, routed, *, shared_mode="sum", gates=True,
             by_slot=False, residual=False):  # fmt: skip
    """The right forward in float64, with switches that make it a learner's mistake."""
    x = x.double()
    y = torch.zeros_like(x)
    S = shared.n_experts
    for e in range(routed.n_experts):
        for k in range(expert_TK.shape[1]):
            rows = (
                (expert_TK[:, k] == e)
                if not by_slot
                else torch.full_like(expert_TK[:, k], k == e, dtype=bool)
            )
            if rows.any():
                g = gate_TK[rows, k].double() if gates else torch.ones(int(rows.sum()))
                y[rows] += g[:, None] * expert_ffn(x[rows], _double(routed), e)
    if shared_mode in ("sum", "mean"):
        s = sum(expert_ffn(x, _double(shared), i) for i in range(S))
        y = y + (s / S if shared_mode == "mean" else s)
    elif shared_mode == "first":
        y = y + expert_ffn(x, _double(shared), 0)
    return y + x if residual else y


def _double(p: ExpertParams) -> ExpertParams:
    w3 = None if p.w3_EFD is None else p.w3_EFD.double()
    return ExpertParams(p.w1_EFD.double(), p.w2_EDF.double(), w3, p.activation)


def _variants() -> list[tuple[str, Callable]]:
    def v(**kw):
        return lambda *a: _forward(*a, **kw)

    return [
        ("forgot the shared experts' output: every token also goes through EVERY shared expert, "
         "with weight 1, and that output is added to the routed sum", v(shared_mode="none")),
        ("the shared experts are averaged; they are summed, each with weight 1 (eq. 9 of "
         "DeepSeekMoE)", v(shared_mode="mean")),
        ("only the first shared expert is used: add the output of every shared expert",
         v(shared_mode="first")),
        ("the routed experts' gates are ignored: multiply each routed output by gate_TK[t, k]",
         v(gates=False)),
        ("the routed experts are taken by slot k; slot k of token t goes to expert "
         "expert_TK[t, k]", v(by_slot=True)),
        ("x is added to the output: the residual connection belongs to the block around this "
         "layer, not to the layer", v(residual=True)),
    ]  # fmt: skip


def _cases():
    # (T, D, F, E routed, K, S shared, activation)
    sizes = [(12, 8, 6, 4, 2, 2, "swiglu"), (9, 6, 5, 6, 3, 1, "gelu"),
             (5, 4, 3, 3, 3, 3, "relu"), (0, 4, 3, 4, 2, 1, "swiglu")]  # fmt: skip
    for i, (T, D, F, E, K, S, act) in enumerate(sizes):
        x = make_tokens(T, D, seed=840 + i)
        shared = make_experts(S, D, F, act, seed=850 + i)
        routed = make_experts(E, D, F, act, seed=860 + i)
        expert_TK, gate_TK, _ = make_routing(T, E, K, seed=870 + i)
        case = f"T={T}, D={D}, {E} routed experts (K={K}), {S} shared, {act}"
        yield case, (x, shared, expert_TK, gate_TK, routed)


def check_shared_routed_forward(shared_routed_forward_fn: Callable) -> None:
    """Check `shared_routed_forward(x_TD, shared, expert_TK, gate_TK, routed) -> y_TD`."""
    n = 0
    for case, args in _cases():
        x, shared, expert_TK, gate_TK, routed = args
        gate = gate_TK.clone().requires_grad_(True)
        out = SHARED.call(shared_routed_forward_fn, x.clone(), shared, expert_TK.clone(), gate,
                          routed, case=case)  # fmt: skip
        SHARED.expect_tensor(out, tuple(x.shape), x.dtype, case)
        want = _forward(*args)
        diagnose(SHARED, out, want, _variants(), args, case, atol=ATOL, rtol=RTOL)
        if x.shape[0] and not out.requires_grad:
            raise SHARED.fail(f"the output carries no gradient on {case}: no .detach()")
        if x.shape[0]:
            (got_grad,) = torch.autograd.grad(out.sum(), gate, allow_unused=True)
            want_grad = torch.stack([expert_ffn(x, routed, int(e)).sum(-1) for e in
                                     range(routed.n_experts)], 1).gather(1, expert_TK)  # fmt: skip
            if got_grad is None or not torch.allclose(got_grad, want_grad, atol=1e-4, rtol=1e-4):
                raise SHARED.fail(f"the gradient w.r.t. gate_TK is wrong on {case}")
        n += 1
    SHARED.passed(f"{n} cases, T = 0 and K = E included")
