"""The decode roofline: the expected experts touched, a decode step's bytes and FLOPs against a
hand count, the real models' shapes against transformers' own modules."""

from __future__ import annotations

import random

import pytest

from minimoe.lm import LMConfig, TinyLM
from minimoe.serving import (
    GPUS,
    REAL_MODELS,
    MoEShape,
    arithmetic_intensity,
    compute_bound_batch,
    decode_step_breakdown,
    decode_step_bytes,
    decode_step_flops,
    decode_step_time,
    expected_experts_touched,
    meta_param_count,
    real_model_config,
    real_model_shape,
    shape_from_lm,
)


def test_expected_experts_touched_values():
    assert expected_experts_touched(8, 2, 0) == 0.0
    assert expected_experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert expected_experts_touched(8, 2, 2) == pytest.approx(8 * (1 - 0.75**2))  # 3.5
    assert expected_experts_touched(8, 8, 3) == pytest.approx(8.0)  # K = E: all of them
    assert expected_experts_touched(1, 1, 5) == pytest.approx(1.0)


def test_expected_experts_touched_by_simulation():
    rng = random.Random(0)
    E, K, B, n = 16, 4, 5, 20000
    total = 0
    for _ in range(n):
        touched = set()
        for _ in range(B):
            touched.update(rng.sample(range(E), K))
        total += len(touched)
    # the standard error of the mean is ~0.01; 0.05 is 5 of them
    assert total / n == pytest.approx(expected_experts_touched(E, K, B), abs=0.05)


@pytest.mark.parametrize(
    ("args", "err"),
    [((8, 2, 1.0), TypeError), ((8, True, 1), TypeError), ((8, 9, 1), ValueError),
     ((0, 1, 1), ValueError), ((8, 2, -1), ValueError), ((8, 0, 1), ValueError)],
)  # fmt: skip
def test_expected_experts_touched_bad_input(args, err):
    with pytest.raises(err):
        expected_experts_touched(*args)


# A small shape to count by hand: D=4, L=3 (1 dense), E=4, K=2, F=5, 1 shared expert of F=3,
# dense F=6, V=10, attention 16 weights, 2 KV elements per position, 8 attention FLOPs per position.
SMALL = MoEShape("small", 4, 3, 1, 4, 2, 5, 1, 3, 6, 10, 16, 2, 8)


def test_decode_bytes_hand_count():
    # always: attention 3*16 = 48; dense FFN 3*4*6 = 72; per MoE layer shared 3*4*3 = 36 and
    # router 4*4 = 16, two MoE layers: 104; head 10*4 = 40: 264 weights
    assert SMALL.always_read_params == 264
    assert SMALL.expert_params == 60
    assert SMALL.total_params == 264 + 2 * 4 * 60 + 40  # + all experts + untied input embedding
    assert SMALL.active_params == SMALL.total_params - 2 * 2 * 60
    # B = 1: K = 2 experts touched per MoE layer; context 7: KV 1*7*2*3 = 42 elements
    got = decode_step_breakdown(SMALL, 1, 7, weight_bytes=2, kv_bytes=1)
    assert got == {"always": 528.0, "experts": 2 * 2 * 60 * 2.0, "kv": 42.0, "total": 1050.0}
    # B = 3, measured 3 experts per layer, bf16 everywhere
    assert decode_step_bytes(SMALL, 3, 7, experts_touched=3) == 2 * (264 + 2 * 3 * 60 + 3 * 42)
    # default: the independent expectation 4 * (1 - 0.5^3) = 3.5 experts
    assert decode_step_bytes(SMALL, 3, 0) == pytest.approx(2 * (264 + 2 * 3.5 * 60))


def test_decode_flops_and_intensity_hand_count():
    # 2 FLOPs per active matmul weight per token (active minus the input embedding 40) plus
    # attention: (S + 1) positions * 3 layers * 8 FLOPs
    matmul = SMALL.active_params - 40
    assert decode_step_flops(SMALL, 2, 7) == 2 * (2 * matmul + 8 * 3 * 8)
    ai = arithmetic_intensity(SMALL, 2, 7)
    assert ai == pytest.approx(decode_step_flops(SMALL, 2, 7) / decode_step_bytes(SMALL, 2, 7))


def test_experts_touched_must_be_possible():
    with pytest.raises(ValueError, match="experts_touched"):
        decode_step_bytes(SMALL, 1, 0, experts_touched=3)  # one token touches K = 2
    with pytest.raises(ValueError, match="experts_touched"):
        decode_step_bytes(SMALL, 4, 0, experts_touched=1)
    with pytest.raises(TypeError, match="shape"):
        decode_step_bytes("mixtral", 1, 0)
    with pytest.raises(ValueError, match="batch"):
        decode_step_bytes(SMALL, 0, 0)


def test_dense_model_intensity_grows_like_batch():
    # E = K = 1 is a dense model: without KV, intensity = B * flops(1) / bytes(1)
    dense = MoEShape("dense", 8, 2, 0, 1, 1, 16, 0, 0, 0, 32, 256, 16, 32, tie_embeddings=True)
    one = arithmetic_intensity(dense, 1, 0)
    assert arithmetic_intensity(dense, 64, 0) == pytest.approx(64 * one, rel=1e-3)


@pytest.mark.slow  # imports transformers (~4 s)
def test_mixtral_shape_and_roofline():
    mixtral = real_model_shape("Mixtral-8x7B")
    assert mixtral.total_params == pytest.approx(46.7e9, rel=2e-3)  # "46.7B total parameters"
    assert mixtral.active_params == pytest.approx(12.9e9, rel=2e-3)  # "12.9B active"
    # B = 1 in bf16: ~1 FLOP per byte, memory-bound on any GPU
    assert 0.9 < arithmetic_intensity(mixtral, 1, 0) < 1.1
    h100 = GPUS["H100 SXM"]
    assert h100.ridge == pytest.approx(989 / 3.35)
    b = compute_bound_batch(mixtral, h100, 0)
    assert b is not None and arithmetic_intensity(mixtral, b, 0) >= h100.ridge
    assert arithmetic_intensity(mixtral, b - 1, 0) < h100.ridge
    # a 1024-position context adds KV reads that grow with B: never compute-bound on an H100
    assert compute_bound_batch(mixtral, h100, 1024) is None
    t = decode_step_time(mixtral, h100, 1, 0)
    assert t == pytest.approx(decode_step_bytes(mixtral, 1, 0) / 3.35e12)


def test_tiny_lm_shape_counts_the_model():
    cfg = LMConfig()
    shape = shape_from_lm(cfg)
    n_params = sum(p.numel() for p in TinyLM(cfg).parameters())
    norms = (2 * cfg.n_layers + 1) * cfg.d_model
    positions = cfg.seq_len * cfg.d_model  # a lookup, like the token embedding: not in MoEShape
    assert shape.total_params == n_params - norms - positions


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_shapes_match_transformers_modules(name):
    """Our count (no norms) against the model transformers builds on the meta device."""
    shape = real_model_shape(name)
    counted = meta_param_count(real_model_config(name))
    assert counted >= shape.total_params
    # the norms (OLMoE: also q/k norms, 1.9e-5 of it), and nothing else: the smallest matrices
    # we count, the routers, are 3e-4 of OLMoE and more of the others
    assert counted - shape.total_params < 1e-4 * counted
