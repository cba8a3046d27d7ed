"""The Mixtral-on-24-GB projection: the memory budget by hand, and the time per token."""

from __future__ import annotations

import pytest

from minimoe.serving import MoEShape
from minimoe.serving.projection import offload_projection


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
