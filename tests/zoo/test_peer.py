"""PEER: product-key retrieval equals the exhaustive top-k, and the layer equals a float64 loop
that scores every expert (outputs and gradients), on square and non-square grids, K = E, T = 0."""

from __future__ import annotations

import pytest
import torch

from minimoe import MoEConfig
from minimoe.experts import ExpertParams
from minimoe.zoo import PEERLayer, grid_shape, product_key_topk
from minimoe.zoo.layers import inactive_params, make_moe_layer
from minimoe.zoo.reference import peer_loop
from tests.zoo._helpers import assert_all_close


def test_grid_shape_is_the_most_square_factorisation():
    assert [grid_shape(E) for E in (1, 4, 8, 12, 16, 7, 1024)] == [
        (1, 1), (2, 2), (2, 4), (3, 4), (4, 4), (1, 7), (32, 32),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="n_experts"):
        grid_shape(0)


@pytest.mark.parametrize("E, k", [(16, 3), (12, 5), (7, 2), (8, 8), (36, 1), (100, 10)])
def test_product_keys_find_the_exhaustive_top_k(E, k):
    n1, n2 = grid_shape(E)
    g = torch.Generator().manual_seed(E * 31 + k)
    q1, q2 = torch.randn(50, 3, 4, generator=g), torch.randn(50, 3, 4, generator=g)
    rows, cols = torch.randn(n1, 4, generator=g), torch.randn(n2, 4, generator=g)
    score, expert = product_key_topk(q1, q2, rows, cols, k)
    full = (q1 @ rows.t())[..., :, None] + (q2 @ cols.t())[..., None, :]  # every expert
    best, best_expert = full.flatten(-2).topk(k, dim=-1)
    torch.testing.assert_close(score, best)
    assert torch.equal(expert, best_expert)
    with pytest.raises(ValueError, match="k"):
        product_key_topk(q1, q2, rows, cols, E + 1)


@pytest.mark.parametrize(
    "E, K, heads, size, activation",
    [
        (16, 2, 3, 1, "swiglu"),
        (12, 3, 2, 2, "gelu"),
        (5, 5, 2, 1, "swiglu"),
        (9, 1, 4, 3, "swiglu"),
    ],
)
def test_layer_matches_the_float64_loop(E, K, heads, size, activation):
    cfg = MoEConfig(d_model=6, d_ff=4, n_experts=E, top_k=K, activation=activation)
    torch.manual_seed(0)
    layer = PEERLayer(cfg, heads=heads, d_key=4, expert_size=size).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    y, result = layer(x)
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    named = dict(layer.named_parameters())
    order = ["query.weight", "rows_ND", "cols_ND", "experts.w1_EFD", "experts.w2_EDF"]
    order += ["experts.w3_EFD"] if activation == "swiglu" else []
    assert sorted(order) == sorted(named)
    leaves = [x, *(named[n] for n in order)]
    grads = torch.autograd.grad((y * R).sum(), leaves)

    copies = [t.detach().clone().requires_grad_(True) for t in leaves]
    x2, w_query, rows, cols, *expert_w = copies
    w3 = expert_w[2] if activation == "swiglu" else None
    params = ExpertParams(expert_w[0], expert_w[1], w3, activation)
    y_ref = peer_loop(x2.reshape(-1, 6), w_query, rows, cols, heads, K, params).reshape(y.shape)
    ref_grads = torch.autograd.grad((y_ref * R).sum(), copies)
    assert_all_close([y], [y_ref], atol=1e-12, name="y")
    assert_all_close(grads, ref_grads, atol=1e-10, name="grads")
    # statistics: every token's h * K retrievals are counted
    assert int(result.stats.routed_E.sum()) == 10 * heads * K
    assert result.extra["expert_THK"].shape == (10, heads, K)


def test_default_heads_match_token_choice_active_expert_weights():
    cfg = MoEConfig(d_model=8, d_ff=6, n_experts=64, top_k=2)
    peer = make_moe_layer("peer", cfg)
    token_choice = make_moe_layer("token_choice", cfg)
    assert peer.heads == cfg.d_ff
    per_expert = 3 * 8  # a singleton SwiGLU expert: gate, up and down vectors
    active_peer = sum(p.numel() for p in peer.experts.parameters()) - inactive_params(peer)
    active_tc = sum(p.numel() for p in token_choice.experts.parameters()) - inactive_params(
        token_choice
    )
    assert active_peer == peer.heads * cfg.top_k * per_expert == active_tc


def test_no_tokens_and_bad_input():
    cfg = MoEConfig(d_model=4, d_ff=2, n_experts=9, top_k=2)
    layer = PEERLayer(cfg)
    y, result = layer(torch.randn(0, 4, requires_grad=True))
    assert y.shape == (0, 4) and int(result.stats.routed_E.sum()) == 0
    with pytest.raises(ValueError, match="d_key must be even"):
        PEERLayer(cfg, d_key=5)
    with pytest.raises(ValueError, match="heads"):
        PEERLayer(cfg, heads=0)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(3, 5))


def test_peer_is_causal_per_token():
    """A token's output depends on its own vector only: changing later tokens changes nothing."""
    cfg = MoEConfig(d_model=4, d_ff=2, n_experts=16, top_k=2)
    torch.manual_seed(0)
    layer = PEERLayer(cfg)
    x = torch.randn(1, 6, 4)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 3, 4)
    y, _ = layer(x)
    y2, _ = layer(x2)
    assert torch.equal(y[:, :3], y2[:, :3]) and not torch.equal(y[:, 3:], y2[:, 3:])
