"""Check for chapter 02, exercise 02.3: the router's gradient from the task loss in the top-1 trap.

The learner computes dL/dW of the router weights for one top-1 MoE step,

    logits_TE = x_TD @ w_ED.T,  e_t = argmax_e logits_te,  y_t = g_t * expert_out_TED[t, e_t],
    L = mean_t sum_d (y_td - target_td)^2,

with the gate g_t of the "shazeer" convention (top-k, then softmax over the k kept logits: with
K = 1 it is exactly 1, so dL/dW = 0; Megatron-LM issue #894) or the "switch" one (softmax, then
top-1: g_t = p_{t, e_t}, which depends on every logit). The reference runs `minimoe.route` and
autograd. Named mistakes: the gate left out of y (a zero gradient for Switch too), Switch's gate
used for Shazeer, the loss summed over tokens instead of averaged, a factor 1/2, the sign
flipped, and, for a gradient written by hand, the softmax's off-diagonal terms forgotten.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.routing import route

TRAP = Exercise("02.3", "the router gradient in the top-1 trap", weights=True)


def _loss(w_ED, x_TD, out_TED, target_TD, gating: str, *, use_gate: bool = True):
    """The task loss of the exercise, through `minimoe.route` (K = 1)."""
    r = route(x_TD @ w_ED.t(), 1, gating)
    T = x_TD.shape[0]
    y_TD = out_TED[torch.arange(T), r.expert_TK[:, 0]]
    if use_gate:
        y_TD = r.gate_TK * y_TD
    return ((y_TD - target_TD) ** 2).sum(-1).mean()


def _grad(x_TD, w_ED, out_TED, target_TD, gating: str, **kw) -> torch.Tensor:
    w = w_ED.detach().clone().requires_grad_(True)
    loss = _loss(w, x_TD, out_TED, target_TD, gating, **kw)
    if not loss.requires_grad:
        return torch.zeros_like(w)
    return torch.autograd.grad(loss, w)[0]


def _diagonal_only(x_TD, w_ED, out_TED, target_TD, gating: str) -> torch.Tensor:
    """Switch's gradient by hand with dp_e/dl_j = p_e (1 - p_e) on e = j only (wrong)."""
    T = x_TD.shape[0]
    p_TE = (x_TD @ w_ED.t()).softmax(-1)
    e_T = p_TE.argmax(-1)
    g_T = p_TE[torch.arange(T), e_T]
    o_TD = out_TED[torch.arange(T), e_T]
    dL_dg_T = 2 * ((g_T[:, None] * o_TD - target_TD) * o_TD).sum(-1) / T
    dl_TE = torch.zeros_like(p_TE)
    dl_TE[torch.arange(T), e_T] = dL_dg_T * g_T * (1 - g_T)
    return dl_TE.t() @ x_TD


def _variants(gating: str) -> list[tuple[str, Callable]]:
    variants = [
        (
            "the loss is the mean over tokens (divide the sum over tokens by T)",
            lambda *a: _grad(*a) * a[0].shape[0],
        ),
        (
            "the loss has no factor 1/2: L = mean_t sum_d (y - target)^2, so dL/dy = 2 (y - target) / T",
            lambda *a: _grad(*a) / 2,
        ),
        (
            "the sign is flipped: return dL/dW, not the update direction -dL/dW",
            lambda *a: -_grad(*a),
        ),
    ]
    if gating == "switch":
        variants.insert(
            0,
            (
                "your Switch gradient is zero: the gate must multiply the chosen expert's output, "
                "y_t = g_t * expert_out_TED[t, e_t], or the loss does not depend on the router",
                lambda *a: _grad(*a, use_gate=False),
            ),
        )
        variants.append(
            (
                "by hand, only the chosen expert's logit got a gradient: the softmax ties all E "
                "logits, dp_e/dl_j = p_e (delta_ej - p_j), so every row of W gets one",
                _diagonal_only,
            )
        )
    else:
        variants.insert(
            0,
            (
                "the Shazeer gate is softmax over the k kept logits; with k = 1 that is "
                "softmax([l]) = 1 exactly, whatever l, so the gradient is exactly 0. You used "
                "Switch's gate p[top-1] (softmax over all E logits first)",
                lambda *a: _grad(*a[:4], "switch"),
            ),
        )
    return variants


def _cases() -> list[tuple[str, tuple]]:
    g = make_generator(27)
    cases = []
    for T, D, E, one in [(6, 4, 3, False), (1, 5, 4, False), (8, 100, 6, False), (7, 6, 4, True)]:
        x = torch.randn(T, D, generator=g)
        w = torch.randn(E, D, generator=g) / D**0.5
        if one:  # every token on expert 0: its logit is far above the others
            x = x + 2.0
            w[0] = 3.0
        out = torch.randn(T, E, D, generator=g)
        target = torch.randn(T, D, generator=g)
        name = f"T={T}, D={D}, E={E}" + (", every token on expert 0" if one else "")
        cases.append((name, (x, w, out, target)))
    return cases


def check_router_gradient(router_gradient_fn: Callable) -> None:
    """Check `router_gradient(x_TD, w_ED, expert_out_TED, target_TD, gating) -> grad_ED` for
    gating "shazeer" (exactly zero) and "switch" (not zero) against autograd through
    `minimoe.route`.

    Raises:
        AssertionError: naming the likely mistake when an answer is wrong.
    """
    cases = _cases()
    for gating in ("shazeer", "switch"):
        for name, inputs in cases:
            x, w, out_TED, target = inputs
            case = f"{gating!r}, {name}"
            args = (x.clone(), w.clone(), out_TED.clone(), target.clone(), gating)
            got = TRAP.call(router_gradient_fn, *args, case=case)
            E, D = w.shape
            if isinstance(got, torch.Tensor) and tuple(got.shape) == (x.shape[0], E) and D != E:
                raise TRAP.fail(
                    f"returned shape {tuple(got.shape)} on {case}: that is the gradient of the "
                    f"logits; the router weights' gradient has w_ED's shape {(E, D)}"
                )
            if isinstance(got, torch.Tensor) and tuple(got.shape) == (D, E) and D != E:
                raise TRAP.fail(f"returned shape {(D, E)} on {case}: transpose it to {(E, D)}")
            TRAP.expect_tensor(got, (E, D), torch.float32, case)
            expected = _grad(*args)
            if gating == "shazeer" and bool(got.abs().max() > 0) and bool(got.abs().max() < 1e-6):
                continue  # a gradient written by hand may round to a few 1e-8: still zero
            diagnose(TRAP, got, expected, _variants(gating), args, case, atol=1e-6, rtol=1e-4)
    TRAP.passed("Shazeer's top-1 gradient is exactly 0; Switch's is not")
