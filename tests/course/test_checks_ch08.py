"""The chapter 08 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import math

import pytest
import torch
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe.course.checks.ch08_expert_choice import (
    check_expert_choice,
    check_smallest_capacity_factor,
)
from minimoe.course.checks.ch08_hash import check_hash_router
from minimoe.course.checks.ch08_recurrent import check_recurrent_router_step
from minimoe.course.checks.ch08_shared import check_shared_routed_forward
from minimoe.course.checks.ch08_soft_moe import check_soft_moe_weights
from minimoe.experts import expert_ffn

# --- 08.1 expert choice ----------------------------------------------------------------------


def expert_choice(probs_TE, capacity, *, descending=True, stable=True, index_order=False,
                  renorm=False, detach=False, over_experts=False):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    if over_experts:
        top = probs_TE.topk(capacity, dim=1)
        return top.indices, top.values
    if stable:
        token_EC = torch.sort(probs_TE.t(), dim=1, descending=descending, stable=True).indices
    else:  # topk of the reversed rows: ties to the higher index
        T = probs_TE.shape[0]
        idx = torch.sort(probs_TE.t().flip(1), dim=1, descending=True, stable=True).indices
        token_EC = T - 1 - idx
    token_EC = token_EC[:, :capacity]
    if index_order:
        token_EC = token_EC.sort(dim=1).values
    source = probs_TE.detach() if detach else probs_TE
    gate_EC = source.t().gather(1, token_EC)
    if renorm:
        gate_EC = gate_EC / gate_EC.sum(1, keepdim=True)
    return token_EC, gate_EC


def choice_with(**kw):
    return lambda p, c: expert_choice(p, c, **kw)


def test_expert_choice_passes(capsys) -> None:
    check_expert_choice(expert_choice)
    assert "✓ Exercise 08.1 (expert-choice routing): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (choice_with(over_experts=True), ["token choice", "over the TOKENS"]),
        (choice_with(descending=False), ["SMALLEST"]),
        (choice_with(stable=False), ["ties", "EARLIER"]),
        (choice_with(index_order=True), ["wrong order"]),
        (choice_with(renorm=True), ["renormalised"]),
        (choice_with(detach=True), ["no gradient"]),
        (lambda p, c: expert_choice(p, c)[0], ["pair"]),
        (lambda p, c: (expert_choice(p, c)[0].int(), expert_choice(p, c)[1]), ["int64"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_expert_choice_wrong(answer, words) -> None:
    fails_with(check_expert_choice, answer, "Exercise 08.1", *words)


def test_expert_choice_refuses_the_library() -> None:
    from minimoe.zoo import expert_choice as library

    fails_with(check_expert_choice, library, "library's own")
    fails_with(check_expert_choice, lambda p, c: library(p, c), "calls the library's own")


# --- 08.6 the investigation's threshold ------------------------------------------------------


def smallest_cf(probs_TE, factors, threshold, *, pairs=False, le=False, floor=False):
    from minimoe.zoo import expert_choice as library

    T, E = probs_TE.shape
    for cf in factors:
        C = min(T, math.floor(T * cf / E) if floor else math.ceil(T * cf / E))
        token_EC, _ = library(probs_TE, C)
        share = (T - C) / T if pairs else (T - token_EC.unique().numel()) / T
        if share < threshold or (le and share <= threshold):
            return cf
    return None


def test_smallest_cf_passes(capsys) -> None:
    check_smallest_capacity_factor(smallest_cf)
    assert "✓ Exercise 08.6 (tokens left without an expert): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda p, f, t: smallest_cf(p, f, t, pairs=True), ["(expert, token) pairs"]),
        (lambda p, f, t: smallest_cf(p, f, t, floor=True), ["rounded up"]),
        (lambda p, f, t: f[-1], ["expected"]),
        (lambda p, f, t: smallest_cf(p, f, t) or f[-1], ["return None"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_smallest_cf_wrong(answer, words) -> None:
    fails_with(check_smallest_capacity_factor, answer, "Exercise 08.6", *words)


def test_smallest_cf_le_is_named_where_it_matters() -> None:
    """`<=` and `<` differ only when the share lands exactly on the threshold: a threshold of
    of 15/60 (15 tokens unserved on 60) is such a case."""
    from minimoe.course.checks import ch08_expert_choice as ch

    cases = ch._coverage_cases()
    hit = [
        (p, f, t)
        for _, p, f, _ in cases
        for t in (i / p.shape[0] for i in range(1, 40))
        if smallest_cf(p, f, t, le=True) != smallest_cf(p, f, t)
    ]
    assert hit, "no batch where <= and < differ: the mistake would be unreachable"
    p, f, t = hit[0]
    original = ch._coverage_cases
    ch._coverage_cases = lambda: [("a threshold hit exactly", p, f, t)]
    try:
        fails_with(check_smallest_capacity_factor,
                   lambda p_, f_, t_: smallest_cf(p_, f_, t_, le=True), "strictly below")  # fmt: skip
    finally:
        ch._coverage_cases = original


# --- 08.2 soft MoE ---------------------------------------------------------------------------


def soft_weights(logits_TEC, *, swap=False, combine_dim=None, naive=False):
    T, E, C = logits_TEC.shape

    def softmax(x, dim):
        if naive:
            e = x.exp()
            return e / e.sum(dim, keepdim=True)
        return x.softmax(dim)

    dispatch = softmax(logits_TEC, 0)
    if combine_dim is None:
        combine = softmax(logits_TEC.reshape(T, E * C), 1).reshape(T, E, C)
    else:
        combine = softmax(logits_TEC, combine_dim)
    return (combine, dispatch) if swap else (dispatch, combine)


def test_soft_passes(capsys) -> None:
    check_soft_moe_weights(soft_weights)
    out = capsys.readouterr().out
    assert "✓ Exercise 08.2 (soft-MoE dispatch and combine): passed" in out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda l: soft_weights(l, swap=True), ["swapped"]),
        (lambda l: soft_weights(l, combine_dim=2), ["per expert", "E*C"]),
        (lambda l: soft_weights(l, combine_dim=0), ["softmax over the tokens, as the dispatch"]),
        (lambda l: soft_weights(l, combine_dim=1), ["over the experts"]),
        (lambda l: (l.softmax(2), soft_weights(l)[1]), ["dispatch", "TOKENS (dim 0)"]),
        (lambda l: soft_weights(l, naive=True), ["NaN", "max"]),
        (lambda l: tuple(w.detach() for w in soft_weights(l)), ["no gradient"]),
        (lambda l: soft_weights(l)[0], ["pair"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_soft_wrong(answer, words) -> None:
    fails_with(check_soft_moe_weights, answer, "Exercise 08.2", *words)


# --- 08.3 hash routing -----------------------------------------------------------------------


def table(V, E, seed=0):
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(seed))
    return perm % E


def route(token_T, expert_V):
    if token_T.numel() and (int(token_T.min()) < 0 or int(token_T.max()) >= len(expert_V)):
        raise ValueError(f"token_T holds ids outside [0, {len(expert_V)})")
    return expert_V[token_T]


def test_hash_passes(capsys) -> None:
    check_hash_router(table, route)
    assert "✓ Exercise 08.3 (a hash router): passed" in capsys.readouterr().out


def _route_positive_only(token_T, expert_V):
    if token_T.numel() and int(token_T.max()) >= len(expert_V):
        raise ValueError("token id too large")
    return expert_V[token_T]


@pytest.mark.parametrize(
    "tab, rt, words",
    [
        (lambda V, E, s=0: torch.arange(V) % E, route, ["without a permutation"]),
        (lambda V, E, s=0: torch.arange(V) * E // V, route, ["contiguous blocks"]),
        (lambda V, E, s=0: torch.randint(0, E, (V,), generator=torch.Generator().manual_seed(s)),
         route, ["independently"]),
        (lambda V, E, s=0: torch.randperm(V) % E, route, ["global RNG"]),
        (table, lambda t, e: e[t], ["ValueError", "before indexing"]),
        (table, _route_positive_only, ["negative id"]),
        (table, lambda t, e: e[t % len(e)], ["ValueError"]),
        (not_done, route, ["not solved yet"]),
        (table, not_done, ["not solved yet"]),
    ],
)  # fmt: skip
def test_hash_wrong(tab, rt, words) -> None:
    fails_with(lambda _: check_hash_router(tab, rt), None, "Exercise 08.3", *words)


# --- 08.4 shared plus routed -----------------------------------------------------------------


def shared_routed(x_TD, shared, expert_TK, gate_TK, routed, *, shared_mode="sum", gates=True,
                  residual=False):  # fmt: skip
    y = torch.zeros_like(x_TD)
    for t in range(x_TD.shape[0]):
        for k in range(expert_TK.shape[1]):
            out = expert_ffn(x_TD[t : t + 1], routed, int(expert_TK[t, k]))[0]
            y[t] = y[t] + (gate_TK[t, k] if gates else 1.0) * out
    S = shared.n_experts
    if shared_mode != "none":
        outs = [expert_ffn(x_TD, shared, s) for s in range(S if shared_mode != "first" else 1)]
        total = torch.stack(outs).sum(0) if outs else 0
        y = y + (total / S if shared_mode == "mean" else total)
    return y + x_TD if residual else y


def shared_with(**kw):
    return lambda *a: shared_routed(*a, **kw)


def test_shared_passes(capsys) -> None:
    check_shared_routed_forward(shared_routed)
    assert "✓ Exercise 08.4 (shared plus routed experts): passed" in capsys.readouterr().out


def _by_slot(x_TD, shared, expert_TK, gate_TK, routed):
    y = sum(expert_ffn(x_TD, shared, s) for s in range(shared.n_experts))
    for k in range(expert_TK.shape[1]):
        y = y + gate_TK[:, k : k + 1] * expert_ffn(x_TD, routed, k)
    return y


@pytest.mark.parametrize(
    "answer, words",
    [
        (shared_with(shared_mode="none"), ["forgot the shared experts"]),
        (shared_with(shared_mode="mean"), ["averaged"]),
        (shared_with(shared_mode="first"), ["only the first shared expert"]),
        (shared_with(gates=False), ["gates are ignored"]),
        (shared_with(residual=True), ["residual"]),
        (_by_slot, ["by slot k"]),
        (lambda *a: shared_routed(*a).detach(), ["no gradient"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_shared_wrong(answer, words) -> None:
    fails_with(check_shared_routed_forward, answer, "Exercise 08.4", *words)


def test_shared_transposed_weights_get_the_weights_hint() -> None:
    def answer(x_TD, shared, expert_TK, gate_TK, routed):
        return x_TD @ shared.w1_EFD[0]  # (T, D) @ (F, D): the layout mistake

    fails_with(check_shared_routed_forward, answer, "Exercise 08.4", "out_features")


# --- 08.5 the recurrent router ---------------------------------------------------------------


def step(x_TD, h_TZ, w_proj_ZD, cell, w_out_EZ, *, mode="right"):
    r_TZ = x_TD @ w_proj_ZD.T
    h_next = cell(h_TZ, r_TZ) if mode == "swap" else cell(r_TZ, h_TZ)
    source = {"right": h_next, "swap": h_next, "from_r": r_TZ, "from_old": h_TZ,
              "hand_old": h_next}[mode]  # fmt: skip
    return source @ w_out_EZ.T, (h_TZ if mode == "hand_old" else h_next)


def test_recurrent_passes(capsys) -> None:
    check_recurrent_router_step(step)
    out = capsys.readouterr().out
    assert "✓ Exercise 08.5 (one step of the recurrent router): passed" in out


@pytest.mark.parametrize(
    "mode, words",
    [
        ("swap", ["swapped", "cell(r_TZ, h_TZ)"]),
        ("from_r", ["recurrence does nothing"]),
        ("from_old", ["previous layer's state"]),
        ("hand_old", ["old state is handed on"]),
    ],
)
def test_recurrent_wrong(mode, words) -> None:
    fails_with(check_recurrent_router_step, lambda *a: step(*a, mode=mode), "Exercise 08.5",
               *words)  # fmt: skip


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda x, h, wp, c, wo: step(x, h, wp.detach(), c, wo), ["gradient w.r.t. w_proj"]),
        (lambda x, h, wp, c, wo: (x @ wp) @ wo.T, ["out_features"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_recurrent_other_mistakes(answer, words) -> None:
    fails_with(check_recurrent_router_step, answer, "Exercise 08.5", *words)


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/08 calls its check, and its title is the check's."""
    from minimoe.course.checks import (
        ch08_expert_choice,
        ch08_hash,
        ch08_recurrent,
        ch08_shared,
        ch08_soft_moe,
    )

    assert_check_cells_match(
        ["08_routing_zoo.ipynb"],
        (ch08_expert_choice.CHOICE, ch08_soft_moe.SOFT, ch08_hash.HASH, ch08_shared.SHARED,
         ch08_recurrent.RECURRENT, ch08_expert_choice.COVERAGE),
        "from minimoe.course.checks.ch08_",
    )  # fmt: skip
