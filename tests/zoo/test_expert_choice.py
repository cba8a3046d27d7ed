"""Expert-choice routing (arXiv 2202.09368) against a float64 loop, by hand and at the edges."""

from __future__ import annotations

import math

import pytest
import torch

from minimoe.zoo import expert_choice, expert_choice_capacity, expert_choice_moe
from minimoe.zoo.reference import expert_choice_loop, expert_choice_moe_loop
from tests.zoo._helpers import (
    assert_all_close,
    experts,
    leaves_of,
    value_and_grads,
    with_leaves,
)


@pytest.mark.parametrize(
    "T, E, cf, C",
    [
        (0, 4, 2.0, 0),
        (8, 4, 1.0, 2),
        (8, 4, 2.0, 4),
        (10, 4, 1.0, 3),
        (5, 2, 10.0, 5),
        (3, 8, 0.1, 1),
    ],
)
def test_capacity_by_hand(T, E, cf, C):
    assert expert_choice_capacity(T, E, cf) == C == min(T, math.ceil(T * cf / E))


@pytest.mark.parametrize(
    "args, err",
    [
        ((-1, 4, 1.0), ValueError),
        ((4, 0, 1.0), ValueError),
        ((4, 4, 0.0), ValueError),
        ((4.0, 4, 1.0), TypeError),
        ((4, 4, float("inf")), ValueError),
        ((4, True, 1.0), TypeError),
    ],
)
def test_capacity_bad_input(args, err):
    with pytest.raises(err):
        expert_choice_capacity(*args)


def test_hand_computed_choice_and_ties():
    # 4 tokens, 2 experts; expert 0's column has a tie between tokens 1 and 3
    probs = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    token, gate = expert_choice(probs, 2)
    assert token.dtype == torch.int64 and token.shape == (2, 2)
    assert token.tolist() == [[1, 3], [0, 2]]  # the tie goes to the lower index, first
    assert gate.tolist() == [[0.6, 0.6], [0.9, 0.7]]
    token3, _ = expert_choice(probs, 3)
    assert token3.tolist() == [[1, 3, 2], [0, 2, 1]]  # 0.4 tie of expert 1: token 1 before 3


def test_all_equal_scores_pick_the_first_tokens():
    probs = torch.full((6, 3), 1 / 3)
    token, _ = expert_choice(probs, 4)
    assert token.tolist() == [[0, 1, 2, 3]] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T, E, C", [(9, 4, 3), (16, 8, 16), (5, 1, 2), (7, 3, 0)])
def test_choice_matches_loop(dtype, T, E, C):
    probs = torch.softmax(torch.randn(T, E, generator=torch.Generator().manual_seed(T)), -1)
    probs = probs.to(dtype)
    token, gate = expert_choice(probs, C)
    tok_ref, gate_ref = expert_choice_loop(probs, C)
    assert token.tolist() == tok_ref
    assert gate.dtype == dtype
    for e in range(E):
        assert gate[e].tolist() == [float(g) for g in gate_ref[e]]


def test_gate_gradient_flows_to_the_chosen_probabilities():
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(logits, -1)
    token, gate = expert_choice(probs, 2)
    g_probs = torch.autograd.grad(gate.sum(), probs, retain_graph=True)[0]
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for e in range(3):
        expected[token[e], e] = 1.0
    assert torch.equal(g_probs, expected)
    (g_logits,) = torch.autograd.grad(gate.sum(), logits)
    assert g_logits.abs().sum() > 0


def test_choice_T0():
    token, gate = expert_choice(torch.zeros(0, 4), 0)
    assert token.shape == (4, 0) and gate.shape == (4, 0)


@pytest.mark.parametrize(
    "probs, C, err",
    [
        (torch.zeros(4, 3), 5, ValueError),
        (torch.zeros(4, 3), -1, ValueError),
        (torch.zeros(4, 3), 1.0, TypeError),
        (torch.zeros(4, 3, dtype=torch.int64), 1, TypeError),
        (torch.zeros(4), 1, ValueError),
        (torch.zeros(4, 0), 1, ValueError),
        ([[0.5]], 1, TypeError),
    ],
)
def test_choice_bad_input(probs, C, err):
    with pytest.raises(err):
        expert_choice(probs, C)


def _moe_case(T=10, D=6, F=8, E=4, C=3, dtype=torch.float64, activation="swiglu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = experts(E, D, F, dtype, activation, seed)
    x = torch.randn(T, D, generator=gen, dtype=dtype)
    probs = torch.softmax(torch.randn(T, E, generator=gen, dtype=dtype), -1)
    token, gate = expert_choice(probs, C)
    return x, token, gate.detach(), params


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("T, E, C", [(10, 4, 3), (6, 2, 6), (5, 5, 1), (4, 3, 0), (0, 3, 0)])
def test_moe_matches_loop_outputs_and_grads(activation, dtype, atol, T, E, C):
    x, token, gate, params = _moe_case(T=T, E=E, C=C, dtype=dtype, activation=activation)
    n_w = len(leaves_of(params))

    def fast(x, gate, *w):
        return expert_choice_moe(x, token, gate, with_leaves(params, list(w)))

    def slow(x, gate, *w):
        return expert_choice_moe_loop(x, token, gate, with_leaves(params, list(w)))

    y, grads = value_and_grads(fast, x, gate, *leaves_of(params))
    y_ref, grads_ref = value_and_grads(slow, x, gate, *leaves_of(params))
    assert y.dtype == dtype and y.shape == x.shape
    assert_all_close([y, *grads], [y_ref, *grads_ref], atol=atol, rtol=1e-5, name="y, grads")
    assert len(grads) == 2 + n_w


def test_unchosen_token_gets_zero_and_repeated_token_sums():
    x, _, _, params = _moe_case(T=4, E=2)
    token = torch.tensor([[0, 1], [0, 2]])  # token 0 twice, token 3 never
    gate = torch.tensor([[0.5, 1.0], [0.25, 2.0]], dtype=torch.float64)
    y = expert_choice_moe(x, token, gate, params)
    from minimoe import expert_ffn

    assert torch.equal(y[3], torch.zeros(6, dtype=torch.float64))
    y0 = 0.5 * expert_ffn(x[:1], params, 0) + 0.25 * expert_ffn(x[:1], params, 1)
    torch.testing.assert_close(y[0], y0[0], atol=1e-12, rtol=0)


def test_moe_bad_input():
    x, token, gate, params = _moe_case(T=5, E=4, C=2)
    with pytest.raises(ValueError, match="token_EC"):
        expert_choice_moe(x, token[:3], gate[:3], params)  # wrong number of experts
    with pytest.raises(ValueError, match="token ids"):
        expert_choice_moe(x, token + 5, gate, params)
    with pytest.raises(TypeError, match="token_EC"):
        expert_choice_moe(x, token.double(), gate, params)
    with pytest.raises(ValueError, match="gate_EC"):
        expert_choice_moe(x, token, gate[:, :1], params)
    with pytest.raises(TypeError):
        expert_choice_moe(x.float(), token, gate, params)  # dtype mismatch
    with pytest.raises(ValueError, match="x_TD"):
        expert_choice_moe(x[:, :3], token, gate, params)
    with pytest.raises(TypeError, match="params"):
        expert_choice_moe(x, token, gate, (1, 2))
