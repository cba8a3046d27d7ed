"""The Mixtral-on-24-GB projection: the memory budget by hand, the time per token, and the\nsticky-routing traces that give it routing locality."""

from __future__ import annotations

import math

import pytest
import torch

from minimoe.serving import MoEShape
from minimoe.serving.projection import MIXTRAL_REPEATS, mixtral_repeat, offload_projection
from minimoe.serving.simulate import (
    expected_repeat_rate,
    fit_repeat,
    random_trace,
    repeat_rate,
    simulate,
    sticky_trace,
)


def test_budget_and_time_by_hand():
    # 2 MoE layers of 4 experts of 3*4*10 = 120 weights (240 bytes); 100 other weights
    shape = MoEShape("toy", 4, 2, 0, 4, 1, 10, 0, 0, 0, 5, 40, 2, 8, tie_embeddings=True)
    resident = (shape.total_params - 8 * 120) * 2
    p = offload_projection(
        shape, gpu_memory=resident + 3 * 240 + 100, context_len=0, overhead=100,
        link_bandwidth=240.0, gpu_bandwidth=1e12, n_tokens=50, policies=("lru", "belady"),
    )  # fmt: skip
    assert p["resident_bytes"] == resident
    assert p["cache_experts"] == 3  # 3 expert slots of 240 bytes, the 100 bytes are overhead
    for row in p["rows"]:  # the link moves one expert per second
        assert row["transfer_s_per_token"] == pytest.approx(row["loads_per_token"])
        want = 1 / (row["transfer_s_per_token"] + row["compute_s_per_token"])
        assert row["tokens_per_s"] == pytest.approx(want)
    lru, belady = p["rows"]
    assert belady["hit_rate"] >= lru["hit_rate"]


@pytest.mark.slow  # imports transformers for Mixtral's configuration
def test_mixtral_projection():
    p = offload_projection()
    assert p["total_experts"] == 256
    assert p["expert_bytes"] == 3 * 4096 * 14336 * 2
    assert 45 <= p["cache_experts"] <= 60
    rows = {r["policy"]: r for r in p["rows"]}
    # the requests cycle through 64 (layer, expert) slots per token, more than the cache holds:
    # LRU always evicts the key needed next time round (its classic loop pathology)
    assert rows["lru"]["hit_rate"] < 0.05
    assert rows["belady"]["hit_rate"] > rows["lfu"]["hit_rate"] > rows["lru"]["hit_rate"]
    assert 0.5 < rows["lru"]["tokens_per_s"] < rows["belady"]["tokens_per_s"] < 5
    # Mixtral's most local layer (Table 5's layer 15): Belady gains, LRU's loop still misses (a
    # kept expert returns after the 63 other requests of one token, more than the cache holds)
    sticky = offload_projection(routing="sticky", repeat=mixtral_repeat(15))
    srows = {r["policy"]: r for r in sticky["rows"]}
    assert 0.6 < sticky["repeat_rate"] < 0.67
    assert srows["lru"]["hit_rate"] < 0.05
    assert srows["belady"]["tokens_per_s"] > rows["belady"]["tokens_per_s"]


# --- routing locality: sticky traces --------------------------------------------------------------


def _toy_shape():
    return MoEShape("toy", 4, 2, 0, 4, 1, 10, 0, 0, 0, 5, 40, 2, 8, tie_embeddings=True)


def _sd(rate, n):
    """The standard error of a share measured over n pairs."""
    return (rate * (1 - rate) / n) ** 0.5


def test_sticky_p0_is_the_independent_trace():
    for seed in (0, 3):
        a, b = random_trace(60, 3, 8, 2, seed=seed), sticky_trace(60, 3, 8, 2, seed=seed)
        assert torch.equal(a.expert_TLK, b.expert_TLK)
    trace = sticky_trace(4000, 2, 8, 2, repeat=0.0, seed=1)
    chance = 1 - math.comb(6, 2) / math.comb(8, 2)  # the paper's 1 - (6/8)(5/7) = 46 %
    assert expected_repeat_rate(8, 2, 0.0) == pytest.approx(chance)
    pairs = 3999 * 2
    assert abs(repeat_rate(trace) - chance) < 4 * _sd(chance, pairs)
    counts_E = torch.bincount(trace.expert_TLK.flatten(), minlength=8).float()
    assert (counts_E / counts_E.mean() - 1).abs().max() < 0.06  # uniform: 2000 picks each


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_sticky_repeat_rate_matches_p(p):
    trace = sticky_trace(3000, 2, 8, 2, repeat=p, seed=2)
    want = expected_repeat_rate(8, 2, p)
    assert want == pytest.approx(1 - (1 - p) ** 2 * 15 / 28)
    measured = repeat_rate(trace)
    assert abs(measured - want) < 4 * _sd(want, 2999 * 2)
    assert fit_repeat(8, 2, measured) == pytest.approx(p, abs=0.04)
    assert fit_repeat(8, 2, want) == pytest.approx(p)  # the exact inverse
    # every token's experts stay distinct, in [0, E)
    expert_TLK = trace.expert_TLK
    assert (expert_TLK[..., 0] != expert_TLK[..., 1]).all()
    assert 0 <= int(expert_TLK.min()) and int(expert_TLK.max()) < 8


def test_sticky_edge_cases():
    frozen = sticky_trace(20, 2, 8, 2, repeat=1.0, seed=4)  # p = 1: the first token forever
    assert (frozen.expert_TLK == frozen.expert_TLK[0]).all()
    assert repeat_rate(frozen) == 1.0
    assert len(sticky_trace(0, 2, 8, 2, repeat=0.5)) == 0
    full = sticky_trace(30, 1, 4, 4, repeat=0.5, seed=1)  # K = E: every expert every token
    assert sorted(full.expert_TLK[7, 0].tolist()) == [0, 1, 2, 3]
    assert repeat_rate(sticky_trace(50, 3, 8, 2, repeat=0.2), per_layer=True).__len__() == 3
    assert fit_repeat(8, 2, 0.30) == 0.0  # below chance: as little locality as the model has


def test_more_locality_more_lru_hits():
    # L = 2, K = 2: a kept expert comes back after 3 other requests, within a cache of 6
    hit = [simulate(sticky_trace(1500, 2, 8, 2, repeat=p, seed=0), "lru", 6).hit_rate
           for p in (0.0, 0.3, 0.6, 0.9)]  # fmt: skip
    assert hit == sorted(hit) and hit[-1] > hit[0] + 0.3
    base = offload_projection(_toy_shape(), gpu_memory=1e12, n_tokens=400,
                              policies=("lru",))  # fmt: skip
    more = offload_projection(_toy_shape(), gpu_memory=1e12, n_tokens=400, policies=("lru",),
                              routing="sticky", repeat=0.8)  # fmt: skip
    # a cache that holds every expert misses each only once, whatever the routing
    assert base["rows"][0]["loads_per_token"] == more["rows"][0]["loads_per_token"] == 8 / 400


def test_projection_names_its_routing():
    shape = _toy_shape()
    budget = dict(gpu_memory=(shape.total_params - 8 * 120) * 2 + 4 * 240, context_len=0,
                  overhead=0.0, n_tokens=300)  # fmt: skip
    ind = offload_projection(shape, **budget)
    assert ind["assumptions"]["routing_model"] == "independent" and ind["repeat"] == 0.0
    assert ind["assumptions"]["routing"].startswith("independent uniform")
    sticky = offload_projection(shape, routing="sticky", repeat=0.7, **budget)
    assert sticky["assumptions"]["routing_model"] == "sticky"
    assert (
        sticky["assumptions"]["repeat"] == 0.7 and "p = 0.700" in sticky["assumptions"]["routing"]
    )
    want = expected_repeat_rate(shape.n_experts, shape.top_k, 0.7)  # E = 4, K = 1: 0.775
    assert sticky["repeat_rate_expected"] == pytest.approx(want) == 1 - 0.3 * 3 / 4
    assert abs(sticky["repeat_rate"] - want) < 4 * _sd(want, 299 * shape.n_moe_layers)
    assert sticky["cache_experts"] == ind["cache_experts"] == 4
    rows = {r["policy"]: r for r in sticky["rows"]}
    assert rows["belady"]["hit_rate"] > {r["policy"]: r for r in ind["rows"]}["belady"]["hit_rate"]


def test_mixtral_table5_calibration():
    # the mean of each layer's eight subsets, inverted: layer 15 repeats most, layer 0 least
    assert mixtral_repeat(0) < mixtral_repeat(31) < mixtral_repeat(15)
    for layer, rates in MIXTRAL_REPEATS.items():
        mean = sum(rates) / len(rates)
        assert expected_repeat_rate(8, 2, mixtral_repeat(layer)) == pytest.approx(mean)
    assert 0.15 < mixtral_repeat(15) < 0.2 and mixtral_repeat(0) < 0.03


def test_locality_bad_input():
    with pytest.raises(ValueError, match="repeat must be"):
        sticky_trace(5, 2, 8, 2, repeat=1.5)
    with pytest.raises(ValueError, match="repeat must be"):
        sticky_trace(5, 2, 8, 2, repeat=-0.1)
    with pytest.raises(TypeError, match="repeat must be a real"):
        sticky_trace(5, 2, 8, 2, repeat="0.5")
    with pytest.raises(ValueError, match="top_k"):
        sticky_trace(5, 2, 8, 9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        repeat_rate(sticky_trace(1, 2, 8, 2))
    with pytest.raises(TypeError, match="trace must be a RoutingTrace"):
        repeat_rate([[0, 1]])
    with pytest.raises(ValueError, match="2K > E"):
        fit_repeat(4, 3, 0.9)
    with pytest.raises(ValueError, match="rate must be"):
        fit_repeat(8, 2, 1.2)
    with pytest.raises(ValueError, match="layer must be one of"):
        mixtral_repeat(3)
    shape = _toy_shape()
    with pytest.raises(ValueError, match="routing must be one of"):
        offload_projection(shape, routing="markov")
    with pytest.raises(ValueError, match="needs repeat"):
        offload_projection(shape, routing="sticky")
    with pytest.raises(ValueError, match="sticky' only"):
        offload_projection(shape, repeat=0.3)
    with pytest.raises(ValueError, match="repeat must be"):
        offload_projection(shape, routing="sticky", repeat=2.0)
