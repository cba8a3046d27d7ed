"""The capstone's check (exercise 04.6) passes a layer wired right and fails, naming the mistake,
on each way of wiring it wrong.

The answer here is written from the pieces of chapters 01 to 04 the way a learner would (not from
the check's own variants), with one switch per mistake.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import fails_with, not_done

from minimoe.course.checks.ch04_capstone import check_moe_layer

pytestmark = pytest.mark.slow  # each check builds six layers and compares their gradients


def moe_layer(x_TD, w_router_ED, params, top_k, capacity_factor, *, renorm_gates=True,
              softmax_after=False, order="k_major", drops=True, rescale=False, floor=False,
              aux_after_drops=False, aux_share=False, aux_from_gates=False, z="mean",
              detach_gates=False, no_router_grad=False, no_k=False, swap13=False):  # fmt: skip
    """A whole MoE layer, with switches that make it a learner's mistake."""
    T, E, K = x_TD.shape[0], w_router_ED.shape[0], top_k
    logits_TE = x_TD @ w_router_ED.t()
    if no_router_grad:
        logits_TE = logits_TE.detach()
    probs_TE = logits_TE.softmax(-1)
    top_TK, expert_TK = logits_TE.topk(K, dim=-1)
    if softmax_after:  # the same as renormalising the chosen probabilities
        gate_TK = top_TK.softmax(-1)
    else:
        gate_TK = probs_TE.gather(1, expert_TK)
        if renorm_gates:
            gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
    if detach_gates:
        gate_TK = gate_TK.detach()
    C = (math.floor if floor else math.ceil)((1 if no_k else K) * T * capacity_factor / E)
    w1_EFD, w3_EFD = (params.w3_EFD, params.w1_EFD) if swap13 else (params.w1_EFD, params.w3_EFD)
    slots_N = expert_TK.t().reshape(-1) if order == "k_major" else expert_TK.reshape(-1)
    onehot_NE = F.one_hot(slots_N, E)
    place_N = (onehot_NE.cumsum(0) * onehot_NE).sum(1) - 1
    place_TK = place_N.view(K, T).t() if order == "k_major" else place_N.view(T, K)
    keep_TK = place_TK < C if drops else torch.ones_like(place_TK, dtype=torch.bool)
    used_TK = gate_TK * keep_TK
    if rescale:
        used_TK = used_TK / used_TK.sum(-1, keepdim=True).clamp_min(1e-9) * gate_TK.sum(-1, True)
    y_TD = torch.zeros_like(x_TD)
    for e in range(E):
        t_R, k_R = torch.nonzero((expert_TK == e) & keep_TK, as_tuple=True)
        x_RD = x_TD[t_R]
        h_RF = F.silu(x_RD @ w1_EFD[e].t()) * (x_RD @ w3_EFD[e].t())
        y_TD = y_TD.index_add(0, t_R, (h_RF @ params.w2_EDF[e].t()) * used_TK[t_R, k_R, None])
    counted = expert_TK[keep_TK] if aux_after_drops else expert_TK.reshape(-1)
    f_E = torch.bincount(counted, minlength=E).float() / (counted.numel() if aux_share else T * K)
    P_E = probs_TE.mean(0)
    if aux_from_gates:
        P_E = torch.zeros_like(probs_TE).scatter(1, expert_TK, gate_TK).mean(0)
    aux = E * (f_E * P_E).sum()
    lse_T = torch.logsumexp(probs_TE if z == "probs" else logits_TE, -1)
    z_loss = {"mean": (lse_T**2).mean(), "sum": (lse_T**2).sum(), "probs": (lse_T**2).mean(),
              "no square": lse_T.mean()}[z]  # fmt: skip
    return y_TD, aux, z_loss


def layer_with(**kw):
    return lambda *args: moe_layer(*args, **kw)


def test_capstone_passes(capsys) -> None:
    check_moe_layer(moe_layer)
    assert "✓ Exercise 04.6 (a whole MoE layer): passed" in capsys.readouterr().out


def test_capstone_softmax_over_the_chosen_logits_passes() -> None:
    """A softmax over the K chosen logits IS the renormalised gate: not a mistake."""
    check_moe_layer(layer_with(softmax_after=True))


@pytest.mark.parametrize(
    "answer, words",
    [
        (layer_with(renorm_gates=False), ["'switch' convention", "divide them by their sum"]),
        (layer_with(order="position"), ["wrong slots", "k-major"]),
        (layer_with(drops=False), ["nothing was dropped"]),
        (layer_with(rescale=True), ["rescaled after the drops"]),
        (layer_with(floor=True), ["rounded down"]),
        (layer_with(aux_after_drops=True), ["only the kept slots", "before the drops"]),
        (layer_with(aux_from_gates=True), ["FULL softmax"]),
        (layer_with(z="sum"), ["z-loss was summed"]),
        (layer_with(z="no square"), ["no square"]),
        (layer_with(z="probs"), ["of the probabilities"]),
        (layer_with(no_k=True), ["no factor K"]),
        (layer_with(swap13=True), ["w1 and w3 swapped"]),
        (layer_with(aux_after_drops=True, aux_share=True), ["as a share of them"]),
        (layer_with(detach_gates=True), ["gradient of w_router", "detach"]),
        (layer_with(no_router_grad=True), ["no gradient reaches w_router"]),
        (lambda *a: moe_layer(*a)[:2], ["three things"]),
        (lambda *a: (moe_layer(*a)[0].double(), *moe_layer(*a)[1:]), ["dtype"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_capstone_wrong(answer, words) -> None:
    fails_with(check_moe_layer, answer, "Exercise 04.6", *words)


def test_capstone_refuses_the_library_layer() -> None:
    import minimoe

    def wrapped(x_TD, w_router_ED, params, top_k, capacity_factor):
        r = minimoe.route(x_TD @ w_router_ED.t(), top_k, "mixtral")
        return x_TD, r.gate_TK.sum(), r.gate_TK.sum()

    fails_with(check_moe_layer, wrapped, "calls the library's own", "route")


def test_capstone_untransposed_router_gets_the_layout_hint() -> None:
    def answer(x_TD, w_router_ED, params, top_k, capacity_factor):
        return moe_layer(x_TD, w_router_ED.t().contiguous().t().t(), params, top_k, capacity_factor)

    fails_with(check_moe_layer, answer, "Exercise 04.6", "out_features, in_features")
