"""measure_causality finds a leak where the output before t depends on tokens at >= t, and only there."""

from __future__ import annotations

import pytest
import torch

from minimoe import MoEConfig, MoELayer
from minimoe.zoo import expert_choice, expert_choice_capacity, expert_choice_moe, measure_causality
from tests.zoo._helpers import experts


def test_cumulative_sum_is_causal_and_a_mean_is_not():
    x = torch.randn(2, 6, 3)
    causal = measure_causality(lambda x: x.cumsum(1), x)
    assert causal.leak == 0.0 and causal.causal
    assert causal.leak_S.shape == (6,) and causal.leak_S[0] == 0
    leaky = measure_causality(lambda x: x - x.mean(1, keepdim=True), x)
    assert not leaky.causal and leaky.leak > 0.1
    assert (leaky.leak_S[1:] > 0).all()


def test_a_leak_from_one_position_only_shows_at_cuts_before_it():
    # the output at every position adds the token at position 4: cuts t <= 4 see it, t = 5 not
    x = torch.randn(1, 6, 2, dtype=torch.float64)
    rep = measure_causality(lambda x: x + x[:, 4:5], x)
    assert (rep.leak_S[1:5] > 0).all() and rep.leak_S[5] == 0


def test_token_choice_dropless_layer_is_causal():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(d_model=8, d_ff=8, n_experts=4, top_k=2))
    rep = measure_causality(layer, torch.randn(2, 10, 8))
    assert rep.causal, rep.leak


def test_token_choice_with_a_capacity_under_the_probs_policy_leaks():
    # a later token with a higher gate can take an earlier token's slot (minimoe.lm.model's note)
    torch.manual_seed(0)
    cfg = MoEConfig(
        d_model=8,
        d_ff=8,
        n_experts=4,
        top_k=1,
        capacity_formula="megatron",
        capacity_factor=0.5,
        drop_policy="probs",
    )
    rep = measure_causality(MoELayer(cfg), torch.randn(2, 16, 8))
    assert not rep.causal


def test_expert_choice_leaks():
    params = experts(4, 8, 8)
    w_router = torch.randn(4, 8, dtype=torch.float64)

    def ec_layer(x_BSD):
        x_TD = x_BSD.reshape(-1, 8)
        C = expert_choice_capacity(x_TD.shape[0], 4, 1.0)
        token, gate = expert_choice(torch.softmax(x_TD @ w_router.t(), -1), C)
        return expert_choice_moe(x_TD, token, gate, params).view(x_BSD.shape)

    rep = measure_causality(ec_layer, torch.randn(2, 12, 8, dtype=torch.float64))
    assert not rep.causal and rep.leak > 1e-3


def test_token_ids_and_a_subset_of_cuts():
    emb = torch.randn(10, 3)
    rep = measure_causality(
        lambda i: emb[i].cumsum(1), torch.randint(0, 10, (2, 5)), positions=[2, 3], vocab_size=10
    )
    assert rep.causal and torch.isnan(rep.leak_S[1]) and rep.leak_S[2] == 0


def test_bad_input():
    f = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="vocab_size"):
        measure_causality(f, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="B, S, D"):
        measure_causality(f, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="callable"):
        measure_causality(3, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="position"):
        measure_causality(f, torch.zeros(2, 3, 4), positions=[3])
    with pytest.raises(ValueError, match="output"):
        measure_causality(lambda x: x[0], torch.zeros(2, 3, 4))
