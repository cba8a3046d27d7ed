"""Check for chapter 04's capstone (exercise 04.6): a whole MoE layer assembled from the pieces of
chapters 01 to 04, compared with `minimoe.MoELayer` holding the same weights.

The layer the learner builds is the one of this config:

    MoEConfig(D, F, E, K, activation="swiglu", gating="mixtral", capacity_formula="megatron",
              capacity_factor=cf, drop_policy="k_major", aux_loss="switch")

router logits x W^T -> softmax, top-K, gates renormalised over the K chosen (02.1) -> capacity
C = ceil(T*K*cf/E) (03.1) and k-major drops (03.2) -> the SwiGLU experts on the kept slots (01.1,
01.2) -> the Switch aux loss on the routed (pre-drop) choices and the z-loss (04, sections 2 and
3). The check compares the output, the two losses and the gradients of x, the router and every
expert weight (through one loss that uses all three outputs), on inputs where experts overflow,
K = 1, K = E and T = 1. A wrong output or loss is matched against the mistakes a learner makes
when wiring the pieces together (gates not renormalised, drops in token order, no drops, the
survivors rescaled, C rounded down or without K, w1 and w3 swapped, the aux loss counted after
the drops or from the gates, the z-loss summed or taken of the probabilities) and the message
names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from minimoe.capacity import _assign_slots, assign_slots, renormalize_survivors
from minimoe.config import MoEConfig
from minimoe.course.checks._common import Exercise, diagnose, make_experts, make_generator
from minimoe.einsum import einsum_moe
from minimoe.experts import ExpertParams
from minimoe.layer import MoELayer
from minimoe.loop import loop_moe
from minimoe.losses import _load_balancing_loss, load_balancing_loss, z_loss
from minimoe.reference import reference_moe
from minimoe.routing import route
from minimoe.sorted import grouped_mm_moe, padded_bmm_moe

CAPSTONE = Exercise(
    "04.6",
    "a whole MoE layer",
    library=(
        MoELayer.forward,
        route,
        assign_slots,
        _assign_slots,
        loop_moe,
        reference_moe,
        einsum_moe,
        grouped_mm_moe,
        padded_bmm_moe,
        load_balancing_loss,
        _load_balancing_loss,
        z_loss,
    ),
    weights=True,
)

ATOL, RTOL = 2e-5, 2e-4
# the one loss whose gradients are compared: sum(y * R) + AUX_COEF * aux + Z_COEF * z
AUX_COEF, Z_COEF = 0.5, 0.25


def capacity_of(T: int, E: int, K: int, cf: float) -> int:
    """C = ceil(T*K*cf/E), the "megatron" formula of chapter 03 (no minimum)."""
    return math.ceil(T * K * cf / E)


def _config(D: int, F_: int, E: int, K: int, cf: float) -> MoEConfig:
    return MoEConfig(
        d_model=D,
        d_ff=F_,
        n_experts=E,
        top_k=K,
        activation="swiglu",
        gating="mixtral",
        capacity_formula="megatron",
        capacity_factor=cf,
        drop_policy="k_major",
        aux_loss="switch",
    )


def library_layer(x_TD, w_router_ED, params: ExpertParams, top_k: int, capacity_factor: float):
    """(y_TD, aux_loss, z_loss) of `minimoe.MoELayer` with these weights (the expected answer)."""
    E, F_, D = params.w1_EFD.shape
    layer = MoELayer(_config(D, F_, E, top_k, capacity_factor)).eval()
    with torch.no_grad():
        layer.router.w_ED.copy_(w_router_ED)
        layer.experts.w1_EFD.copy_(params.w1_EFD)
        layer.experts.w2_EDF.copy_(params.w2_EDF)
        layer.experts.w3_EFD.copy_(params.w3_EFD)
    y_TD, result = layer(x_TD)
    grads = dict(zip(("w_router", "w1", "w2", "w3"), layer.parameters(), strict=True))
    return y_TD, result.aux_loss, result.z_loss, grads


def _wired(
    x_TD,
    w_router_ED,
    params,
    K,
    cf,
    *,
    gating="mixtral",
    policy="k_major",
    capacity="ceil",
    renorm=False,
    swap_w1_w3=False,
    aux="routed",
    z="mean",
):
    """The layer wired from the library's pieces, with switches that make it a known mistake."""
    T, E = x_TD.shape[0], w_router_ED.shape[0]
    logits_TE = x_TD @ w_router_ED.t()
    r = route(logits_TE, K, gating)
    C = {
        "ceil": capacity_of(T, E, K, cf),
        "floor": math.floor(T * K * cf / E),
        "no K": math.ceil(T * cf / E),
        "none": None,
    }[capacity]
    keep_TK, _ = assign_slots(r.expert_TK, r.gate_TK, E, C, policy)
    gate_TK = renormalize_survivors(r.gate_TK, keep_TK) if renorm else r.gate_TK * keep_TK
    if swap_w1_w3:
        params = ExpertParams(params.w3_EFD, params.w2_EDF, params.w1_EFD, "swiglu")
    y_TD = loop_moe(x_TD, r.expert_TK, gate_TK, params, keep_TK)
    probs_TE = r.probs_TE
    if aux == "routed":
        aux_loss = load_balancing_loss(probs_TE, r.expert_TK)
    else:
        counted_TK = keep_TK if aux.startswith("kept") else torch.ones_like(keep_TK)
        count_E = torch.zeros(E).index_add_(
            0, r.expert_TK[counted_TK], torch.ones(int(counted_TK.sum()))
        )
        f_E = count_E / (counted_TK.sum().clamp_min(1) if aux == "kept share" else T * K)
        P_E = probs_TE.mean(0)
        if aux == "gates":
            P_E = torch.zeros_like(probs_TE).scatter(1, r.expert_TK, r.gate_TK).mean(0)
        aux_loss = E * (f_E * P_E).sum()
    lse_T = torch.logsumexp(logits_TE, dim=-1)
    z_val = {
        "mean": (lse_T**2).mean(),
        "sum": (lse_T**2).sum(),
        "no square": lse_T.mean(),
        "probs": (torch.logsumexp(probs_TE, dim=-1) ** 2).mean(),
    }[z]
    return y_TD, aux_loss, z_val  # fmt: skip


def _variants(part: int) -> list[tuple[str, Callable]]:
    def v(**kw):
        return lambda *args: _wired(*args, **kw)[part]

    if part == 0:
        return [
            (
                "the gates are the K chosen softmax probabilities as they are (the 'switch' "
                "convention of 02.1); this layer is 'mixtral': divide them by their sum (a "
                "softmax over the K chosen logits gives the same)",
                v(gating="switch"),
            ),
            (
                "the drops hit the wrong slots: you filled each expert in token order, every "
                "choice competing; this layer is k-major (exercise 03.2): every first choice "
                "before any second choice, token order within",
                v(policy="position"),
            ),
            (
                "nothing was dropped: each expert keeps at most C = ceil(T*K*cf/E) slots and a "
                "dropped slot contributes 0",
                v(capacity="none"),
            ),
            (
                "the survivors' gates were rescaled after the drops; in this layer a dropped "
                "slot just contributes 0 and the kept gates stay as they were",
                v(renorm=True),
            ),
            ("C was rounded down; C = ceil(T*K*cf/E) (exercise 03.1)", v(capacity="floor")),
            ("C has no factor K; C = ceil(T*K*cf/E): each token fills K slots",
             v(capacity="no K")),
            (
                "w1 and w3 swapped in the SwiGLU: silu(x w1^T) * (x w3^T), then w2 (w1 is the "
                "gate projection that goes through silu)",
                v(swap_w1_w3=True),
            ),
        ]  # fmt: skip
    if part == 1:
        return [
            (
                "the aux loss counted only the kept slots; f_e counts what the router SENT, all "
                "T*K routed slots before the drops (a collapsed router whose overflow is dropped "
                "must still pay)",
                v(aux="kept"),
            ),
            (
                "the aux loss counted only the kept slots (as a share of them); f_e counts all "
                "T*K routed slots, before the drops",
                v(aux="kept share"),
            ),
            (
                "P came from the gates of the chosen experts; P_e is the mean over tokens of the "
                "FULL softmax probability of e",
                v(aux="gates"),
            ),
        ]
    return [
        ("the z-loss was summed over tokens; take the MEAN of logsumexp(logits)**2", v(z="sum")),
        ("the z-loss has no square: mean over tokens of logsumexp(logits)**2", v(z="no square")),
        ("the z-loss was taken of the probabilities; it works on the raw router logits",
         v(z="probs")),
    ]  # fmt: skip


def _inputs(T: int, D: int, F_: int, E: int, K: int, seed: int, crowd: bool):
    """x, router weights and SwiGLU experts; with `crowd` every token leans towards expert 0
    (so it overflows and the drop order matters)."""
    g = make_generator(seed)
    w_router_ED = torch.randn(E, D, generator=g) / D**0.5
    x_TD = torch.randn(T, D, generator=g)
    if crowd:
        x_TD = x_TD + 1.5 * w_router_ED[0] / w_router_ED[0].norm() * D**0.5 / 2
    return x_TD, w_router_ED, make_experts(E, D, F_, "swiglu", seed + 1)


def _unpack(out: Any, T: int, D: int, case: str) -> tuple[torch.Tensor, ...]:
    if out is None:
        raise CAPSTONE.fail(f"returned None on {case}: did you forget the `return`?")
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CAPSTONE.fail(f"return three things on {case}: (y_TD, aux_loss, z_loss)")
    y_TD, aux, z = out
    CAPSTONE.expect_tensor(y_TD, (T, D), torch.float32, case)
    for name, v in (("aux_loss", aux), ("z_loss", z)):
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise CAPSTONE.fail(f"{name} must be one number (a 0-d tensor) on {case}")
    return y_TD, aux.reshape(()), z.reshape(())


def check_moe_layer(moe_layer: Callable) -> None:
    """Check `moe_layer(x_TD, w_router_ED, params, top_k, capacity_factor) -> (y_TD, aux_loss,
    z_loss)` against `minimoe.MoELayer` with the same weights: outputs, losses and gradients."""
    # (T, D, F, E, K, cf, crowd)
    cases = [
        (32, 16, 24, 4, 2, 1.0, True),
        (24, 8, 12, 6, 2, 0.75, True),
        (16, 8, 12, 4, 1, 1.25, True),
        (12, 8, 8, 4, 4, 1.0, False),
        (1, 8, 8, 4, 2, 1.0, False),
        (20, 8, 16, 5, 2, 4.0, True),
    ]
    for i, (T, D, F_, E, K, cf, crowd) in enumerate(cases):
        x_TD, w_router_ED, params = _inputs(T, D, F_, E, K, seed=180 + 3 * i, crowd=crowd)
        C = capacity_of(T, E, K, cf)
        case = f"T={T}, D={D}, F={F_}, E={E}, K={K}, capacity factor {cf:g} (C={C})"
        x_ref = x_TD.clone().requires_grad_(True)
        # the library's gradients: the same loss, through a layer whose input requires grad
        y_ref, aux_ref, z_ref, ref_params = library_layer(x_ref, w_router_ED, params, K, cf)
        R_TD = torch.randn(T, D, generator=make_generator(190 + i))
        ((y_ref * R_TD).sum() + AUX_COEF * aux_ref + Z_COEF * z_ref).backward()
        want = {"x": x_ref.grad} | {k: p.grad for k, p in ref_params.items()}

        leaves = {
            "x": x_TD.clone(),
            "w_router": w_router_ED.clone(),
            "w1": params.w1_EFD.clone(),
            "w2": params.w2_EDF.clone(),
            "w3": params.w3_EFD.clone(),
        }
        for leaf in leaves.values():
            leaf.requires_grad_(True)
        mine = ExpertParams(leaves["w1"], leaves["w2"], leaves["w3"], "swiglu")
        out = CAPSTONE.call(moe_layer, leaves["x"], leaves["w_router"], mine, K, cf, case=case)
        y_TD, aux, z = _unpack(out, T, D, case)
        args = (x_TD, w_router_ED, params, K, cf)
        with torch.no_grad():
            diagnose(CAPSTONE, y_TD.detach(), y_ref.detach(), _variants(0), args, f"{case}: y",
                     atol=ATOL, rtol=RTOL)  # fmt: skip
            diagnose(CAPSTONE, aux.detach(), aux_ref.detach(), _variants(1), args,
                     f"{case}: aux_loss", atol=ATOL, rtol=RTOL)  # fmt: skip
            diagnose(CAPSTONE, z.detach(), z_ref.detach(), _variants(2), args,
                     f"{case}: z_loss", atol=ATOL, rtol=RTOL)  # fmt: skip
        _check_gradients(leaves, y_TD, aux, z, R_TD, want, case)
    CAPSTONE.passed(
        f"{len(cases)} layers against minimoe.MoELayer: y, aux_loss, z_loss and the gradients of "
        "x, the router and the experts"
    )


_WHY = {
    "w_router": "the router gets its gradient through the gates, the aux loss (through P) and "
    "the z-loss: build them from the logits without .detach(), .item(), argmax-only "
    "indexing or torch.no_grad()",
    "x": "x reaches the output through the experts and through the router logits",
}


def _check_gradients(leaves, y_TD, aux, z, R_TD, want, case) -> None:
    loss = (y_TD * R_TD).sum() + AUX_COEF * aux + Z_COEF * z
    if not loss.requires_grad:
        raise CAPSTONE.fail(
            f"on {case}, none of y, aux_loss, z_loss carries a gradient: the layer must train, "
            "so avoid .detach(), .item(), float(...) and torch.no_grad() on the way"
        )
    # the weights first: a gradient cut at the router shows in x's too, and is named at its source
    names = ["w_router", "w1", "w2", "w3", "x"]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    for name, got in zip(names, grads, strict=True):
        expected = want[name]
        why = _WHY.get(name, "every expert weight reaches y through the kept slots")
        if got is None:
            raise CAPSTONE.fail(f"on {case}, no gradient reaches {name}: {why}")
        if not torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
            err = float((got - expected).abs().max())
            raise CAPSTONE.fail(
                f"on {case}, the gradient of {name} differs from MoELayer's (max abs diff "
                f"{err:.3g}) although y and the losses match: {why}"
            )
