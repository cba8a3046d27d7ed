"""TinyLM: shapes, causal masking, the dense twin's active parameters, the experts_fn it is given."""

import pytest
import torch

from minimoe.layer import MoELayer
from minimoe.lm.model import (
    EXPERTS_IMPLS,
    LMConfig,
    TinyLM,
    count_params,
    dense_twin,
)
from minimoe.loop import loop_moe
from minimoe.testing import assert_close

TINY = LMConfig(seq_len=12, d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=8)


def _model(cfg=TINY, seed=0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(cfg, **kw).double()


def _idx(B=3, S=12, seed=1):
    return torch.randint(0, 256, (B, S), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_one_result_per_moe_layer():
    model = _model(LMConfig(**{**TINY.to_dict(), "n_layers": 3, "moe_every": 2}))
    logits, results = model(_idx())
    assert logits.shape == (3, 12, 256) and logits.dtype == torch.float64
    assert len(results) == 1 and [b.ffn.__class__.__name__ for b in model.blocks] == [
        "DenseFFN",
        "MoELayer",
        "DenseFFN",
    ]
    assert results[0].routing.expert_TK.shape == (36, 2)
    _, dense_results = _model(dense_twin(TINY))(_idx())
    assert dense_results == []


@pytest.mark.parametrize("cfg", [TINY, dense_twin(TINY)], ids=["moe", "dense"])
def test_causal_a_future_byte_does_not_change_earlier_logits(cfg):
    model = _model(cfg)
    idx = _idx(B=2)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    a, _ = model(idx)
    b, _ = model(changed)
    assert_close(b[:, :7], a[:, :7], atol=1e-12, name="logits before the change")
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_position_drops_stay_causal_within_a_sequence():
    cfg = LMConfig(**{**TINY.to_dict(), "capacity_formula": "megatron", "capacity_factor": 0.5})
    model = _model(cfg)
    idx = _idx(B=1)
    changed = idx.clone()
    changed[0, 9] = (changed[0, 9] + 7) % 256
    (a, ra), (b, _) = model(idx), model(changed)
    assert ra[0].stats.drop_rate > 0.2
    assert_close(b[:, :9], a[:, :9], atol=1e-12, name="logits before the change")


def test_count_params_by_hand():
    V, S, D, L, E, F = 256, 12, 16, 2, 4, 8
    per_block = 4 * D * D + 2 * D + E * D + E * 3 * D * F  # attention, 2 norms, router, experts
    total = V * D + S * D + L * per_block + D  # tied head: counted once
    active = total - L * (E - 2) * 3 * D * F
    assert count_params(_model()) == (total, active)
    untied = _model(LMConfig(**{**TINY.to_dict(), "tie_embeddings": False}))
    assert count_params(untied) == (total + V * D, active + V * D)


@pytest.mark.parametrize("moe_every,activation", [(1, "swiglu"), (2, "gelu")])
def test_dense_twin_has_the_same_active_ffn_parameters(moe_every, activation):
    cfg = LMConfig(**{**TINY.to_dict(), "moe_every": moe_every, "activation": activation})
    twin = dense_twin(cfg)
    assert twin.moe_every == 0 and twin.d_ff == cfg.top_k * cfg.d_ff
    assert twin.activation == activation and dense_twin(twin) == twin
    for block in _model(cfg).blocks:  # dense blocks of the MoE model: already top_k * d_ff
        if not isinstance(block.ffn, MoELayer):
            assert block.ffn.w1_FD.shape == (cfg.top_k * cfg.d_ff, cfg.d_model)
    _, active = count_params(_model(cfg))
    total_dense, active_dense = count_params(_model(twin))
    assert total_dense == active_dense
    # exactly equal but for the routers: E * D weights in each MoE layer
    assert active - active_dense == cfg.n_moe_layers * cfg.n_experts * cfg.d_model


def test_moe_layers_use_the_given_experts_fn():
    calls = []

    def spy(x_TD, expert_TK, gate_TK, params, keep_TK=None):
        calls.append(x_TD.shape)
        return loop_moe(x_TD, expert_TK, gate_TK, params, keep_TK)

    model = _model(experts_fn=spy)
    model(_idx())
    assert calls == [(36, 16), (36, 16)]
    assert all(layer.experts_fn is spy for layer in model.moe_layers)


def test_experts_implementations_give_the_same_logits():
    torch.manual_seed(0)
    ref = TinyLM(TINY)  # float32: grouped_mm's native kernel has no float64
    idx = _idx()
    expected, _ = ref(idx)
    for name, fn in EXPERTS_IMPLS.items():
        model = TinyLM(TINY, experts_fn=fn)
        model.load_state_dict(ref.state_dict())
        logits, _ = model(idx)
        assert_close(logits, expected, atol=1e-5, rtol=1e-4, name=name)


def test_one_expert_top1_moe_equals_its_dense_twin():
    cfg = LMConfig(**{**TINY.to_dict(), "n_experts": 1, "top_k": 1})
    moe, dense = _model(cfg), _model(dense_twin(cfg))
    state = {}
    for key, value in moe.state_dict().items():
        if ".ffn.router." in key:
            continue
        key = key.replace("ffn.experts.w1_EFD", "ffn.w1_FD").replace(
            "ffn.experts.w2_EDF", "ffn.w2_DF"
        )
        key = key.replace("ffn.experts.w3_EFD", "ffn.w3_FD")
        state[key] = value[0] if ".ffn." in key else value
    dense.load_state_dict(state)
    idx = _idx()
    assert_close(moe(idx)[0], dense(idx)[0], atol=1e-12, name="logits")


def test_bad_configs_and_inputs_are_refused():
    base = TINY.to_dict()
    for change, match in [
        ({"d_model": 15}, "multiple of n_heads"),
        ({"moe_every": 3}, "leaves no MoE layer"),
        ({"gating": "top1"}, "gating"),
        ({"top_k": 5}, "top_k"),
        ({"dropout": 1.0}, "dropout"),
        ({"seq_len": 0}, "seq_len"),
    ]:
        with pytest.raises(ValueError, match=match):
            LMConfig(**{**base, **change})
    model = _model()
    with pytest.raises(ValueError, match="int64"):
        model(_idx().int())
    with pytest.raises(ValueError, match="seq_len"):
        model(_idx(S=13))
    with pytest.raises(TypeError, match="LMConfig"):
        TinyLM(TINY.moe_config())


def test_edge_sizes_one_byte_and_d100():
    cfg = LMConfig(**{**TINY.to_dict(), "d_model": 100, "n_heads": 4, "top_k": 4})  # K = E
    model = _model(cfg)
    logits, results = model(torch.tensor([[65]]))
    assert logits.shape == (1, 1, 256) and results[0].stats.dead_experts == 0
    assert isinstance(model.moe_layers[0], MoELayer)
