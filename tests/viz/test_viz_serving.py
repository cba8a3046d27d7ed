"""The serving explorers draw what `minimoe.serving` computes for the controls' values."""

import pytest
import torch

from minimoe.serving import (
    GPUS,
    RoutingTrace,
    arithmetic_intensity,
    belady_hits,
    compute_bound_batch,
    decode_step_breakdown,
    expected_experts_touched,
    flatten_trace,
    lru_hits,
)
from minimoe.serving.simulate import simulate
from minimoe.viz.serving import (
    BATCHES,
    HIT_COLOUR,
    MISS_COLOUR,
    POLICIES,
    POLICY_COLOURS,
    POLICY_LABELS,
    cache_explorer,
    dense_equivalent,
    hit_rate_curve,
    hits_TLK,
    model_shape,
    roofline_explorer,
)


def make_trace(T=40, L=2, E=8, K=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    trace = RoutingTrace(E, L, K)
    for _ in range(T):
        trace.append(torch.rand(L, E, generator=g).argsort(-1)[:, :K])
    return trace


@pytest.mark.slow  # builds four real models' transformers configurations (5 to 10 s)
def test_roofline_follows_every_control():
    rx = roofline_explorer("Mixtral-8x7B", "H100 SXM", batch=1, context_len=512)
    shape = model_shape("Mixtral-8x7B")
    moe = rx.figures["roofline"].data[0]
    assert list(moe.x) == list(BATCHES)
    assert moe.y[0] == pytest.approx(arithmetic_intensity(shape, 1, 512))
    assert rx.result["intensity"] == pytest.approx(arithmetic_intensity(shape, 1, 512))
    assert rx.result["bound"] == "memory"  # B = 1: about 1 FLOP per byte
    rx.controls["batch"].value = 64
    parts = decode_step_breakdown(shape, 64, 512)
    drawn = [bar.x[0] for bar in rx.figures["bytes"].data]
    assert drawn == pytest.approx(
        [parts["always"] / 1e9, parts["experts"] / 1e9, parts["kv"] / 1e9]
    )
    assert f"{expected_experts_touched(8, 2, 64):.1f}</b> of 8" in rx.summary.value
    rx.controls["gpu"].value = "A100 80GB SXM"
    ridge = rx.figures["roofline"].data[2]
    assert list(ridge.y) == [GPUS["A100 80GB SXM"].ridge] * 2
    assert rx.result["compute_bound_batch"] == compute_bound_batch(
        shape, GPUS["A100 80GB SXM"], 512
    )
    rx.controls["model"].value = "DeepSeek-V3"
    rx.controls["context"].value = 0
    ds = model_shape("DeepSeek-V3")
    assert rx.result["intensity"] == pytest.approx(arithmetic_intensity(ds, 64, 0))
    assert "DeepSeek-V3" in rx.figures["roofline"].layout.title.text
    assert rx.last_update_ms == rx.last_update_ms  # timed (not NaN)


def test_dense_equivalent_reads_only_active_weights_and_batches_better():
    shape = model_shape("Mixtral-8x7B")
    dense = dense_equivalent(shape)
    # the same active weights but for the router's E - K unused rows (L * (E - K) * D)
    router_rows = shape.n_layers * (shape.n_experts - shape.top_k) * shape.d_model
    assert dense.active_params == shape.active_params - router_rows
    assert dense.total_params == dense.active_params
    for B in (2, 16, 256):  # the MoE step reads more experts as B grows; the dense one does not
        assert arithmetic_intensity(dense, B, 0) > arithmetic_intensity(shape, B, 0)
    assert arithmetic_intensity(dense, 1, 0) == pytest.approx(arithmetic_intensity(shape, 1, 0))


def test_roofline_rejects_unknown_choices():
    with pytest.raises(ValueError, match="model must be one of"):
        roofline_explorer("GPT-4")
    with pytest.raises(ValueError, match="gpu must be one of"):
        roofline_explorer(gpu="TPU")
    with pytest.raises(ValueError, match="batch must be one of"):
        roofline_explorer(batch=3)


def test_hits_follow_the_library_in_the_runtime_order():
    trace = make_trace()
    for policy, fn in (("lru", lru_hits), ("belady", belady_hits)):
        hits = hits_TLK(trace, policy, 5)
        assert hits.shape == (40, 2, 2)
        assert hits.reshape(-1).tolist() == fn(flatten_trace(trace), 5)
    curve = hit_rate_curve(trace, "lru", [0, 16])
    assert curve[0] == 0.0 and curve[1] == pytest.approx(1 - 16 / 160)  # only cold misses
    assert hit_rate_curve(RoutingTrace(8, 2, 2), "lru", [4]) == [0.0]


def test_cache_explorer_follows_policy_and_size():
    trace = make_trace()
    keys = flatten_trace(trace)
    cx = cache_explorer(trace, "lru", 4, expert_mb=2.0)
    assert cx.hit_rate == pytest.approx(sum(lru_hits(keys, 4)) / len(keys))
    assert f"{cx.hit_rate:.1%}" in cx.summary.value
    cx.controls["cache_size"].value = 10
    rate = sum(lru_hits(keys, 10)) / len(keys)
    assert cx.hit_rate == pytest.approx(rate)
    z = torch.tensor(cx.figures["hits"].data[0].z)  # (L, T): share of K that hit
    assert torch.allclose(z, cx.hits_TLK.float().mean(-1).t())
    assert list(cx.figures["curve"].data[-1].y) == [pytest.approx(rate)]
    cx.controls["policy"].value = "belady"
    best = sum(belady_hits(keys, 10)) / len(keys)
    assert cx.hit_rate == pytest.approx(best) and best >= rate
    misses = len(keys) - sum(belady_hits(keys, 10))
    assert f"{misses} misses" in cx.summary.value and f"{misses * 2.0:,.1f} MB" in cx.summary.value
    assert [line.name for line in cx.figures["curve"].data[:-1]] == [
        POLICY_LABELS[p] for p in POLICIES
    ]
    for p, line in zip(POLICIES, cx.figures["curve"].data):
        assert list(line.y) == pytest.approx(hit_rate_curve(trace, p, range(17)))
    # a policy that loads only on a miss loads 1 - hit rate experts per request
    for p, line in zip(("lru", "lfu"), cx.figures["loads"].data):
        assert list(line.y) == pytest.approx([1 - r for r in hit_rate_curve(trace, p, range(17))])


def test_cache_explorer_prefetch_shows_the_simulators_hits_and_loads():
    trace = make_trace(T=60)
    keys = flatten_trace(trace)
    n = len(keys)
    cx = cache_explorer(trace, "lru", 4, expert_mb=0.5)
    cx.controls["policy"].value = "prefetch"
    sim = simulate(trace, "prefetch", 4)
    assert cx.hits_TLK.reshape(-1).tolist() == sim.hits
    assert cx.hit_rate == pytest.approx(sim.hit_rate) and cx.loads == sim.loads
    # the prefetcher loads experts nobody asked for: more loads than misses, and than LRU's
    assert sim.loads > sim.misses and sim.loads > n - sum(lru_hits(keys, 4))
    assert f"<b class='minimoe-loads'>{sim.loads}</b>" in cx.summary.value
    assert f"({sim.misses} on a miss, {sim.loads - sim.misses} prefetched)" in cx.summary.value
    assert cx.mb_moved == pytest.approx(sim.loads * 0.5)
    assert f"{sim.loads * 0.5:,.1f} MB</b> moved" in cx.summary.value
    assert list(cx.figures["loads"].data[-1].y) == [pytest.approx(sim.loads / n)]
    assert list(cx.figures["curve"].data[-1].y) == [pytest.approx(sim.hit_rate)]
    assert "Prefetch, 4 experts cached" in cx.figures["hits"].layout.title.text
    prefetch_line = cx.figures["loads"].data[POLICIES.index("prefetch")]
    assert list(prefetch_line.y) == pytest.approx(
        [simulate(trace, "prefetch", size).loads / n for size in range(17)]
    )
    cx.controls["cache_size"].value = 0  # nothing cached: every request misses, none prefetched
    assert cx.hit_rate == 0.0 and cx.loads == n and "prefetched" not in cx.summary.value
    # the lesson's call is unchanged, and a start on prefetch works
    assert cache_explorer(trace, "prefetch", 6).loads == simulate(trace, "prefetch", 6).loads
    assert POLICY_COLOURS["prefetch"] not in (POLICY_COLOURS["lru"], MISS_COLOUR, HIT_COLOUR)


def test_cache_explorer_shows_at_most_max_tokens_and_handles_an_empty_trace():
    cx = cache_explorer(make_trace(T=50), max_tokens=20)
    assert len(cx.figures["hits"].data[0].z[0]) == 20
    assert "first 20 of 50 shown" in cx.figures["hits"].layout.xaxis.title.text
    empty = cache_explorer(RoutingTrace(4, 1, 1), cache_size=2)
    assert empty.hit_rate == 0.0


def test_cache_explorer_rejects_bad_input():
    with pytest.raises(TypeError, match="trace must be a RoutingTrace"):
        cache_explorer([1, 2, 3])
    with pytest.raises(ValueError, match="policy must be one of"):
        cache_explorer(make_trace(), "fifo")
    with pytest.raises(ValueError, match="policy must be one of"):
        hits_TLK(make_trace(), "mru", 3)
    with pytest.raises(ValueError, match="cache_size must be"):
        cache_explorer(make_trace(), cache_size=17)
