"""KV-cache decoding: the same logits as TinyLM.forward on the full prefix, sampling, traces."""

from __future__ import annotations

import pytest
import torch

from minimoe.lm import LMConfig, TinyLM
from minimoe.serving.generate import KVCache, forward_cached, generate, sample_next

SMALL = LMConfig(seq_len=24, d_model=32, n_heads=2, d_ff=32, n_experts=4, top_k=2)


def small_model(cfg: LMConfig = SMALL, seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(cfg).eval()


@pytest.mark.parametrize("chunks", [[24], [1] * 24, [5, 1, 1, 10, 7]])
@pytest.mark.parametrize("moe_every", [1, 2, 0])
def test_cached_logits_equal_full_forward(chunks, moe_every):
    cfg = LMConfig(**{**SMALL.to_dict(), "n_layers": 2, "moe_every": moe_every})
    model = small_model(cfg)
    idx_BS = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full_BSV, results = model(idx_BS)
    cache, got, experts, start = KVCache(cfg.n_layers), [], [], 0
    for n in chunks:
        logits, e = forward_cached(model, idx_BS[:, start : start + n], cache)
        got.append(logits)
        experts.append(e)
        start += n
    got_BSV = torch.cat(got, dim=1)
    diff = (got_BSV - full_BSV).abs().max().item()
    assert diff < 1e-5, f"max abs diff {diff}"
    assert cache.length == 24
    # the routing of every position is the full forward's (rows ordered b, s in each chunk)
    for layer, result in enumerate(results):
        full_BSK = result.routing.expert_TK.view(3, 24, -1)
        chunked_BSK = torch.cat([e[layer].view(3, n, -1) for e, n in zip(experts, chunks)], 1)
        assert torch.equal(full_BSK, chunked_BSK)


def test_cache_overflow_is_refused():
    model = small_model()
    cache = KVCache(2)
    forward_cached(model, torch.zeros(1, 20, dtype=torch.int64), cache)
    with pytest.raises(ValueError, match="seq_len"):
        forward_cached(model, torch.zeros(1, 5, dtype=torch.int64), cache)


def test_generate_greedy_matches_full_forward_argmax():
    model = small_model()
    out = generate(model, b"hello", 10, temperature=0)
    seq = list(b"hello")
    for _ in range(10):  # the slow way: the whole prefix every step
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    assert out.new == bytes(seq[5:])
    assert len(out.trace) == 5 + 9 == out.forward_tokens  # the last byte is never run
    assert out.trace.expert_TLK.shape == (14, 2, 2)
    assert out.inputs == seq[:14]


def test_generate_is_seeded_and_prefill_mode_independent():
    model = small_model()
    a = generate(model, b"x = ", 30, temperature=1.0, seed=5)
    b = generate(model, b"x = ", 30, temperature=1.0, seed=5, prefill="token")
    c = generate(model, b"x = ", 30, temperature=1.0, seed=6)
    assert a.new == b.new and len(a.new) == 30
    assert a.new != c.new  # 30 bytes at temperature 1: a collision has negligible probability
    assert torch.equal(a.trace.expert_TLK, b.trace.expert_TLK)


def test_generate_past_the_context_rebuilds_the_cache():
    model = small_model()  # seq_len 24
    out = generate(model, b"abc", 60, temperature=0.7, seed=0)
    assert len(out.new) == 60
    assert out.forward_tokens > 3 + 59  # the rebuilds run positions again
    assert len(out.trace) == out.forward_tokens


def test_generate_dense_model_and_edge_cases():
    dense = small_model(LMConfig(**{**SMALL.to_dict(), "moe_every": 0}))
    out = generate(dense, b"a", 3, temperature=0)
    assert out.trace is None and len(out.new) == 3
    model = small_model()
    assert generate(model, b"a", 0).new == b""
    with pytest.raises(ValueError, match="prompt"):
        generate(model, b"", 3)
    with pytest.raises(TypeError, match="prompt"):
        generate(model, "text", 3)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, b"a", 3, temperature=-1)
    with pytest.raises(ValueError, match="prefill"):
        generate(model, b"a", 3, prefill="batch")
    with pytest.raises(TypeError, match="model"):
        generate(object(), b"a", 3)


def test_sample_next_top_k_and_greedy():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    assert sample_next(logits, 0.0, None, g) == 1
    draws = {sample_next(logits, 1.0, 2, g) for _ in range(200)}
    assert draws == {1, 2}  # top-2 only, and both appear
