"""The chapter 02 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe.course.checks.ch02_gate import check_gate
from minimoe.course.checks.ch02_noise import check_noisy_logits
from minimoe.course.checks.ch02_trap import check_router_gradient

# --- 02.1 the gating conventions -----------------------------------------------------------------


def gate(logits_TE, k, convention, *, renorm_switch=False, renorm_mixtral=True,
         shazeer_all=False, fill=float("-inf"), order="best", log=False, detach=False,
         threshold=False, probs_out=False, swap=False, dim=-1):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    T, E = logits_TE.shape
    if threshold:  # keep every expert at least as good as the k-th: too many on ties
        kth = logits_TE.topk(k, dim=-1).values[:, -1:]
        rows_TK = torch.nonzero(logits_TE >= kth)[:, 1].view(T, k)  # fails when ties add rows
        expert_TK = rows_TK.gather(1, logits_TE.gather(1, rows_TK).argsort(-1, descending=True))
    else:
        expert_TK = logits_TE.softmax(dim).topk(k, dim=-1).indices
    if order == "index":
        expert_TK = expert_TK.sort(-1).values
    elif order == "ascending":
        expert_TK = expert_TK.flip(-1)
    softmax = torch.log_softmax if log else torch.softmax
    if convention == "shazeer" and not shazeer_all:
        keep_TE = torch.zeros_like(logits_TE, dtype=torch.bool).scatter(1, expert_TK, True)
        probs_TE = softmax(logits_TE.masked_fill(~keep_TE, fill), -1)
        gate_TK = probs_TE.gather(1, expert_TK)
    else:
        probs_TE = softmax(logits_TE, -1)
        gate_TK = probs_TE.gather(1, expert_TK)
        if (convention == "mixtral" and renorm_mixtral) or (
            convention == "switch" and renorm_switch
        ):
            gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
    if detach:
        gate_TK = gate_TK.detach()
    if probs_out:
        gate_TK = probs_TE
    return (gate_TK, expert_TK) if swap else (expert_TK, gate_TK)


def gate_with(**kw):
    return lambda *args: gate(*args, **kw)


def test_gate_passes(capsys) -> None:
    check_gate(gate)
    assert "✓ Exercise 02.1 (the gating conventions): passed" in capsys.readouterr().out


def test_gate_switch_softmax_over_k_logits_is_named_as_renormalised() -> None:
    def softmax_of_kept(logits_TE, k, convention):
        expert_TK = logits_TE.topk(k, dim=-1).indices
        return expert_TK, logits_TE.gather(1, expert_TK).softmax(-1)  # right for 2 of 3

    fails_with(check_gate, softmax_of_kept, "'switch'", "does not renormalise", "k chosen logits")


def test_gate_mixtral_renormalising_raw_logits() -> None:
    def raw(logits_TE, k, convention):
        if convention != "mixtral":
            return gate(logits_TE, k, convention)
        values, expert_TK = logits_TE.topk(k, dim=-1)
        return expert_TK, values / values.sum(-1, keepdim=True)

    fails_with(check_gate, raw, "'mixtral'", "raw logits")


@pytest.mark.parametrize(
    "answer, words",
    [
        (gate_with(renorm_switch=True), ["'switch'", "does not renormalise"]),
        (gate_with(renorm_mixtral=False), ["'mixtral'", "forgot to renormalise"]),
        (gate_with(shazeer_all=True), ["'shazeer'", "over all E logits"]),
        (gate_with(fill=0.0), ["'shazeer'", "with 0 instead of -inf"]),
        (gate_with(log=True), ["log-probabilities"]),
        (gate_with(order="index"), ["not best first"]),
        (gate_with(order="ascending"), ["ascending"]),
        (gate_with(threshold=True), ["ties", "torch.topk"]),
        (gate_with(probs_out=True), ["all E experts"]),
        (gate_with(swap=True), ["(expert_TK, gate_TK)"]),
        (gate_with(dim=0), ["dim=0"]),
        (gate_with(detach=True), ["cut off"]),
        (
            lambda l, k, c: (l.topk(k, dim=-1, largest=False).indices, gate(l, k, c)[1]),
            ["smallest"],
        ),
        (lambda l, k, c: (l.topk(k, dim=-1).indices, l.topk(k, dim=-1).values), ["raw logits"]),
        (lambda *a: gate(*a)[0], ["return the pair"]),
        (lambda *a: (gate(*a)[0].float(), gate(*a)[1]), ["integer expert ids"]),
        (lambda *a: (gate(*a)[0], gate(*a)[1].double()), ["dtype"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_gate_wrong(answer, words) -> None:
    fails_with(check_gate, answer, "Exercise 02.1", *words)


def test_gate_unknown_mistake_reports_the_difference() -> None:
    message = fails_with(check_gate, lambda *a: (gate(*a)[0], gate(*a)[1] * 1.01))
    assert "max abs diff" in message


# --- 02.2 noisy top-k ----------------------------------------------------------------------------


def noisy_logits(x_TD, w_gate_ED, w_noise_ED, eps_TE, training, *, mode="right",
                 scale="softplus", weights="noise", detach=False):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    clean_TE = x_TD @ w_gate_ED.t()
    on = {"right": training, "always": True, "never": False, "inverted": not training}[mode]
    if not on:
        return clean_TE
    h_TE = x_TD @ (w_noise_ED if weights == "noise" else w_gate_ED).t()
    std_TE = {"softplus": F.softplus, "none": lambda h: h, "exp": torch.exp}[scale](h_TE)
    if detach:
        std_TE = std_TE.detach()
    return clean_TE + eps_TE * std_TE


def noisy_with(**kw):
    return lambda *args: noisy_logits(*args, **kw)


def test_noisy_passes(capsys) -> None:
    check_noisy_logits(noisy_logits)
    assert "✓ Exercise 02.2 (noisy top-k, train vs eval): passed" in capsys.readouterr().out


def test_noisy_module_answer_passes() -> None:
    """A learner who writes it with F.linear and their own softplus passes too."""

    def with_linear(x_TD, w_gate_ED, w_noise_ED, eps_TE, training):
        h_TE = F.linear(x_TD, w_gate_ED)
        if training:
            h_TE = h_TE + eps_TE * torch.log1p(torch.exp(F.linear(x_TD, w_noise_ED)))
        return h_TE

    check_noisy_logits(with_linear)


def wrapped_in_parameters(x_TD, w_gate_ED, w_noise_ED, eps_TE, training):
    """nn.Linear layers given the weights: new leaves, so the given weights get no gradient."""
    gate = torch.nn.Linear(x_TD.shape[1], w_gate_ED.shape[0], bias=False)
    noise = torch.nn.Linear(x_TD.shape[1], w_gate_ED.shape[0], bias=False)
    gate.weight, noise.weight = torch.nn.Parameter(w_gate_ED), torch.nn.Parameter(w_noise_ED)
    return gate(x_TD) + eps_TE * F.softplus(noise(x_TD)) * training


@pytest.mark.parametrize(
    "answer, words",
    [
        (noisy_with(mode="always"), ["left on in evaluation"]),
        (noisy_with(mode="never"), ["no noise in training"]),
        (noisy_with(mode="inverted"), ["no noise in training"]),
        (noisy_with(scale="none"), ["without the softplus"]),
        (noisy_with(scale="exp"), ["used exp"]),
        (noisy_with(weights="gate"), ["not from the gate weights"]),
        (noisy_with(detach=True), ["w_noise gets no gradient", ".detach()"]),
        (wrapped_in_parameters, ["w_gate", "nn.Parameter"]),
        (
            lambda x, wg, wn, eps, training: x @ wg.t() + F.softplus(x @ wn.t()) * training,
            ["standard normal draw"],
        ),
        (lambda x, wg, wn, eps, training: x @ wg + eps * F.softplus(x @ wn), ["transpose"]),
        (lambda *a: noisy_logits(*a).double(), ["dtype"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_noisy_wrong(answer, words) -> None:
    fails_with(check_noisy_logits, answer, "Exercise 02.2", *words)


# --- 02.3 the router gradient in the trap --------------------------------------------------------


def router_gradient(x_TD, w_ED, expert_out_TED, target_TD, gating, *, use_gate=True,
                    shazeer_as_switch=False, reduce="mean", half=False, sign=1.0,
                    logits_grad=False):  # fmt: skip
    """The right answer by autograd, with switches that make it a learner's mistake."""
    T = x_TD.shape[0]
    w = w_ED.detach().clone().requires_grad_(True)
    logits_TE = x_TD @ w.t()
    logits_TE.retain_grad()
    e_T = logits_TE.argmax(-1)
    if gating == "switch" or shazeer_as_switch:
        g_T = logits_TE.softmax(-1)[torch.arange(T), e_T]
    else:
        g_T = logits_TE.gather(1, e_T[:, None]).softmax(-1)[:, 0]
    y_TD = expert_out_TED[torch.arange(T), e_T]
    if use_gate:
        y_TD = g_T[:, None] * y_TD
    sq_T = ((y_TD - target_TD) ** 2).sum(-1)
    loss = (sq_T.mean() if reduce == "mean" else sq_T.sum()) * (0.5 if half else 1.0)
    if not loss.requires_grad:
        return torch.zeros_like(w_ED)
    loss.backward()
    return sign * (logits_TE.grad if logits_grad else w.grad)


def by_hand(x_TD, w_ED, expert_out_TED, target_TD, gating, *, full_jacobian=True):
    """The gradient written out: dL/dg, then through the softmax (Switch) or nothing (Shazeer)."""
    T = x_TD.shape[0]
    p_TE = (x_TD @ w_ED.t()).softmax(-1)
    e_T = p_TE.argmax(-1)
    if gating == "shazeer":
        return torch.zeros_like(w_ED)  # softmax over one logit: the gate is the constant 1
    g_T = p_TE[torch.arange(T), e_T]
    o_TD = expert_out_TED[torch.arange(T), e_T]
    dg_T = 2 * ((g_T[:, None] * o_TD - target_TD) * o_TD).sum(-1) / T
    onehot_TE = F.one_hot(e_T, w_ED.shape[0]).float()
    if full_jacobian:
        dl_TE = dg_T[:, None] * g_T[:, None] * (onehot_TE - p_TE)
    else:
        dl_TE = dg_T[:, None] * g_T[:, None] * (1 - g_T[:, None]) * onehot_TE
    return dl_TE.t() @ x_TD


def grad_with(**kw):
    return lambda *args: router_gradient(*args, **kw)


def test_router_gradient_passes(capsys) -> None:
    check_router_gradient(router_gradient)
    out = capsys.readouterr().out
    assert "✓ Exercise 02.3 (the router gradient in the top-1 trap): passed" in out


def test_router_gradient_by_hand_passes() -> None:
    check_router_gradient(by_hand)


@pytest.mark.parametrize(
    "answer, words",
    [
        (grad_with(use_gate=False), ["'switch'", "gradient is zero", "multiply"]),
        (grad_with(shazeer_as_switch=True), ["'shazeer'", "exactly 0"]),
        (grad_with(reduce="sum"), ["mean over tokens"]),
        (grad_with(half=True), ["no factor 1/2"]),
        (grad_with(sign=-1.0), ["sign is flipped"]),
        (grad_with(logits_grad=True), ["gradient of the logits"]),
        (lambda *a: router_gradient(*a).t(), ["transpose"]),
        (lambda *a: by_hand(*a, full_jacobian=False), ["'switch'", "delta_ej - p_j"]),
        (lambda *a: None, ["returned None"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_router_gradient_wrong(answer, words) -> None:
    fails_with(check_router_gradient, answer, "Exercise 02.3", *words)


def test_the_trap_is_real() -> None:
    """The library's "shazeer" top-1 gives the router exactly zero gradient; "switch" does not."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    out, target = torch.randn(6, 3, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.equal(router_gradient(x, w, out, target, "shazeer"), torch.zeros(3, 4))
    assert router_gradient(x, w, out, target, "switch").abs().max() > 1e-3


# --- the notebook's check cells ------------------------------------------------------------------


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/02 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch02_gate as ch02
    from minimoe.course.checks import ch02_noise, ch02_trap

    assert_check_cells_match(
        ["02_routing.ipynb"],
        (ch02.GATE, ch02_noise.NOISY, ch02_trap.TRAP),
        "from minimoe.course.checks.ch02_",
    )


def test_gate_refuses_the_library() -> None:
    from minimoe import route

    def wraps_route(logits_TE, k, convention):
        r = route(logits_TE, k, convention)
        return r.expert_TK, r.gate_TK

    fails_with(check_gate, wraps_route, "Exercise 02.1", "calls the library's own `route`")
    fails_with(check_gate, route, "Exercise 02.1", "library's own `route`")
