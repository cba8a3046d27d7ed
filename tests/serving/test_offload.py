"""The offloaded runtime: same text as the resident model, and the simulator predicts its hits,
misses and bytes exactly; the prefetch policy's predictor."""

from __future__ import annotations

import pytest
import torch

from minimoe.lm import LMConfig, TinyLM
from minimoe.serving import RoutingTrace, belady_hits, flatten_trace, lru_hits
from minimoe.serving.generate import generate
from minimoe.serving.offload import OffloadedLM, policy_table
from minimoe.serving.prefetch import PrefetchCache
from minimoe.serving.simulate import LINKS, build_policy, random_trace, simulate

CFG = LMConfig(seq_len=24, d_model=32, n_heads=2, d_ff=32, n_experts=4, top_k=2)


def model_for(top_k: int = 2) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(LMConfig(**{**CFG.to_dict(), "top_k": top_k}))


@pytest.mark.parametrize("policy", ["lru", "lfu", "prefetch", "belady"])
@pytest.mark.parametrize("cache_size", [0, 3, 8])
def test_offloaded_runtime_matches_resident_and_simulator(tmp_path, policy, cache_size):
    model = model_for(top_k=3 if cache_size == 3 else 2)
    resident = generate(model, b"def f(", 14, temperature=0.9, seed=2, prefill="token")
    runtime = OffloadedLM(model, tmp_path, build_policy(policy, cache_size, resident.trace))
    assert runtime.resident_expert_params == 0  # the runtime's model holds no expert weights
    out = runtime.generate(b"def f(", 14, temperature=0.9, seed=2)
    assert out.new == resident.new
    assert runtime.requests == flatten_trace(resident.trace)
    sim = simulate(resident.trace, policy, cache_size, expert_bytes=runtime.store.expert_bytes)
    assert runtime.hits == sim.hits
    assert runtime.store.bytes_read == sim.bytes_moved
    assert runtime.store.loads == sim.loads
    if cache_size == 8:  # everything fits: only compulsory misses (and no wasted prefetch)
        assert sim.misses <= 8 and 0 < sim.hit_rate < 1
    if cache_size == 0:
        assert sim.hit_rate == 0 and sim.loads == len(sim.hits)


def test_runtime_hits_are_the_cache_functions(tmp_path):
    model = model_for()
    resident = generate(model, b"import", 20, temperature=0, prefill="token")
    keys = flatten_trace(resident.trace)
    for policy, fn in [("lru", lru_hits), ("belady", belady_hits)]:
        runtime = OffloadedLM(model, tmp_path / policy, build_policy(policy, 3, resident.trace))
        runtime.generate(b"import", 20, temperature=0)
        assert runtime.hits == fn(keys, 3)


def test_belady_needs_the_same_requests(tmp_path):
    model = model_for()
    resident = generate(model, b"abc", 10, temperature=0, prefill="token")
    runtime = OffloadedLM(model, tmp_path, build_policy("belady", 2, resident.trace))
    with pytest.raises(ValueError, match="trace"):
        runtime.generate(b"xyz", 10, temperature=0)  # another prompt: another trace


def test_prefetch_predicts_from_the_request_history():
    cache = PrefetchCache(4, n_experts=4, n_layers=2, top_k=1)
    assert cache.request(0) is False and cache.prefetched == []  # nothing seen for layer 1 yet
    assert cache.request(4 + 2) is False  # layer 1, expert 2; layer 0's history: expert 0
    assert cache.prefetched == []  # expert 0 of layer 0 is already cached: refreshed only
    cache.request(1)  # layer 0, expert 1 -> prefetch layer 1's most used: expert 2 (cached)
    assert cache.prefetched == []
    cache = PrefetchCache(2, n_experts=4, n_layers=2, top_k=1)
    for key in [0, 6, 0]:  # after token 1's layer 0, layer 1's history says expert 2
        cache.request(key)
    assert cache.request(6) is True  # brought back by the prefetch after the request of 0
    assert cache.predict(0) == [0]


def test_simulator_times_and_random_traces():
    trace = random_trace(50, n_layers=4, n_experts=8, top_k=2, seed=0)
    assert len(flatten_trace(trace)) == 50 * 4 * 2
    res = simulate(trace, "lru", 32, expert_bytes=1e6, bandwidth=LINKS["PCIe 4.0 x16"])
    assert res.seconds == pytest.approx(res.bytes_moved / 31.5e9, rel=1e-3)
    best = simulate(trace, "belady", 8, expert_bytes=1.0)
    for policy in ("lru", "lfu"):
        assert simulate(trace, policy, 8).hit_rate <= best.hit_rate
    with pytest.raises(ValueError, match="policy"):
        simulate(trace, "fifo", 4)
    with pytest.raises(TypeError, match="trace"):
        build_policy("lru", 4, [1, 2])
    empty = simulate(RoutingTrace(4, 2, 2), "prefetch", 2)
    assert empty.hits == [] and empty.hit_rate == 0.0


@pytest.mark.slow
def test_policy_table_rows(tmp_path):
    rows, resident = policy_table(
        model_for(), tmp_path, b"class ", 12, cache_sizes=(2, 8), progress=False
    )
    assert len(rows) == 8
    for row in rows:
        assert row["same_text_as_resident"] and row["hits_match"]
        assert row["hit_rate_measured"] == row["hit_rate_simulated"]
        assert row["bytes_moved"] == row["bytes_moved_simulated"]
