"""Soft MoE (arXiv 2308.00951, eqs. 1-3) against explicit sums in float64."""

from __future__ import annotations

import pytest
import torch

from minimoe import expert_ffn
from minimoe.zoo import soft_moe, soft_moe_weights
from minimoe.zoo.reference import soft_moe_loop
from tests.zoo._helpers import (
    assert_all_close,
    experts,
    leaves_of,
    value_and_grads,
    with_leaves,
)


def test_weights_normalise_over_tokens_and_over_slots():
    logits = torch.randn(7, 3, 2, dtype=torch.float64)
    dispatch, combine = soft_moe_weights(logits)
    torch.testing.assert_close(dispatch.sum(0), torch.ones(3, 2, dtype=torch.float64))
    torch.testing.assert_close(combine.sum((1, 2)), torch.ones(7, dtype=torch.float64))


def test_weights_by_hand():
    # 2 tokens, 1 expert, 2 slots
    logits = torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]], dtype=torch.float64)
    dispatch, combine = soft_moe_weights(logits)
    e = torch.e
    assert torch.allclose(dispatch[:, 0, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(
        dispatch[:, 0, 1], torch.tensor([e / (e + 1), 1 / (e + 1)], dtype=torch.float64)
    )
    assert torch.allclose(
        combine[0, 0], torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64)
    )
    assert torch.allclose(combine[1, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_weights_T0_and_bad_input():
    d, c = soft_moe_weights(torch.zeros(0, 2, 3))
    assert d.shape == c.shape == (0, 2, 3)
    with pytest.raises(ValueError):
        soft_moe_weights(torch.zeros(2, 3))
    with pytest.raises(TypeError):
        soft_moe_weights(torch.zeros(2, 3, 1, dtype=torch.int64))
    with pytest.raises(ValueError):
        soft_moe_weights(torch.zeros(2, 0, 1))


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 3e-5)])
@pytest.mark.parametrize("T, E, C", [(6, 3, 2), (5, 1, 1), (1, 2, 3), (0, 2, 2)])
def test_soft_moe_matches_loop_outputs_and_grads(activation, dtype, atol, T, E, C):
    D, F = 5, 7
    gen = torch.Generator().manual_seed(T + E)
    params = experts(E, D, F, dtype, activation)
    x = torch.randn(T, D, generator=gen, dtype=dtype)
    phi = torch.randn(D, E, C, generator=gen, dtype=dtype) / D**0.5

    def fast(x, phi, *w):
        return soft_moe(x, phi, with_leaves(params, list(w)))

    def slow(x, phi, *w):
        return soft_moe_loop(x, phi, with_leaves(params, list(w)))

    y, grads = value_and_grads(fast, x, phi, *leaves_of(params))
    y_ref, grads_ref = value_and_grads(slow, x, phi, *leaves_of(params))
    assert y.dtype == dtype and y.shape == (T, D)
    assert_all_close([y, *grads], [y_ref, *grads_ref], atol=atol, rtol=1e-5)


def test_one_token_one_slot_is_the_expert():
    """With T = 1, E = 1, C = 1 both softmaxes are 1: y = FFN_0(x)."""
    params = experts(1, 4, 6)
    x = torch.randn(1, 4, dtype=torch.float64)
    y = soft_moe(x, torch.randn(4, 1, 1, dtype=torch.float64), params)
    torch.testing.assert_close(y, expert_ffn(x, params, 0), atol=1e-12, rtol=0)


def test_normalize_option_is_scale_invariant_in_x():
    params = experts(2, 4, 6)
    x = torch.randn(5, 4, dtype=torch.float64)
    phi = torch.randn(4, 2, 2, dtype=torch.float64)
    y1 = soft_moe(x, phi, params, normalize=True, scale=3.0)
    y2 = soft_moe(x, 7.0 * phi, params, normalize=True, scale=3.0)
    torch.testing.assert_close(y1, y2)  # phi's norm does not matter, only its direction and scale
    assert not torch.allclose(y1, soft_moe(x, phi, params))


def test_soft_moe_bad_input():
    params = experts(2, 4, 6)
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="phi_DEC"):
        soft_moe(x, torch.randn(3, 2, 2, dtype=torch.float64), params)
    with pytest.raises(ValueError, match="E=3"):
        soft_moe(x, torch.randn(4, 3, 2, dtype=torch.float64), params)
    with pytest.raises(TypeError, match="phi_DEC"):
        soft_moe(x, torch.randn(4, 2, 2), params)
    with pytest.raises(TypeError):
        soft_moe(x, torch.randn(4, 2, 2, dtype=torch.float64), params, normalize=1)
