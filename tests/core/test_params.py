"""Parameter counts: hand-computed small configs, real MoELayers, and HF transformers' own models."""

from __future__ import annotations

import pytest
import torch

from minimoe import MoEConfig, MoELayer, count_decoder_params, count_moe_params
from minimoe.params import PUBLISHED_CONFIGS


def test_moe_layer_hand_computed() -> None:
    # router 4*8 = 32; one SwiGLU expert 3*8*16 = 384
    cfg = MoEConfig(d_model=8, d_ff=16, n_experts=4, top_k=2, activation="swiglu")
    assert count_moe_params(cfg) == (32 + 4 * 384, 32 + 2 * 384)
    # GELU expert 2*8*16 = 256
    assert count_moe_params(cfg.replace(activation="gelu")) == (32 + 4 * 256, 32 + 2 * 256)


@pytest.mark.parametrize(
    "changes",
    [
        dict(),
        dict(activation="gelu"),
        dict(top_k=4),
        dict(noise="shazeer"),
        dict(gating="deepseek_v3"),
        dict(d_model=100, d_ff=7, top_k=1),
    ],
)
def test_moe_layer_total_matches_numel(changes: dict) -> None:
    cfg = MoEConfig(d_model=8, d_ff=12, n_experts=4, top_k=2).replace(**changes)
    layer = MoELayer(cfg)
    total, active = count_moe_params(cfg)
    assert total == sum(p.numel() for p in layer.parameters())
    one_expert = sum(p[0].numel() for p in layer.experts.parameters())
    assert total - active == (cfg.n_experts - cfg.top_k) * one_expert


def test_moe_layer_rejects_non_config() -> None:
    with pytest.raises(TypeError, match="MoEConfig"):
        count_moe_params({"d_model": 8})


def test_decoder_hand_computed() -> None:
    # V=10, D=4, L=1, H=2, Hkv=1 (hd=2), F=3, E=3, K=1, untied
    # attention: q 4*4 + k,v 2*(4*2) + o 4*4 = 48; norms 8; router 12; expert 3*4*3 = 36
    # embeddings 2*10*4 = 80; final norm 4
    total, active = count_decoder_params(
        vocab_size=10,
        hidden_size=4,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        intermediate_size=3,
        n_experts=3,
        top_k=1,
    )
    assert total == 80 + 4 + 48 + 8 + 12 + 3 * 36
    assert active == 80 + 4 + 48 + 8 + 12 + 1 * 36


def test_decoder_tied_embeddings_count_once() -> None:
    sizes = PUBLISHED_CONFIGS["Mixtral-8x7B"] | dict(tied_embeddings=False)
    untied = count_decoder_params(**sizes)
    tied = count_decoder_params(**(sizes | dict(tied_embeddings=True)))
    assert untied[0] - tied[0] == 32000 * 4096
    assert untied[1] - tied[1] == 32000 * 4096


def test_mixtral_published_figures() -> None:
    total, active = count_decoder_params(**PUBLISHED_CONFIGS["Mixtral-8x7B"])
    assert round(total / 1e9, 1) == 46.7
    assert round(active / 1e9, 1) == 12.9


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(top_k=9), "top_k"),
        (dict(n_kv_heads=5), "multiple"),
        (dict(qk_norm="layer"), "qk_norm"),
        (dict(n_layers=0), "n_layers"),
        (dict(hidden_size=4095), "hidden_size"),
    ],
)
def test_decoder_bad_input(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        count_decoder_params(**(PUBLISHED_CONFIGS["Mixtral-8x7B"] | bad))


def _hf_counts(model: torch.nn.Module, n_experts: int, top_k: int) -> tuple[int, int]:
    """Total numel, and total minus the weights of the E - K experts a token does not use."""
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    assert experts % n_experts == 0
    return total, total - experts // n_experts * (n_experts - top_k)


def test_mixtral_matches_hf_on_meta_device() -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.MixtralConfig()  # the defaults are Mixtral 8x7B
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(hf_cfg)
    hf_total, hf_active = _hf_counts(model, hf_cfg.num_local_experts, hf_cfg.num_experts_per_tok)
    ours = count_decoder_params(
        vocab_size=hf_cfg.vocab_size,
        hidden_size=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads,
        n_kv_heads=hf_cfg.num_key_value_heads,
        intermediate_size=hf_cfg.intermediate_size,
        n_experts=hf_cfg.num_local_experts,
        top_k=hf_cfg.num_experts_per_tok,
        tied_embeddings=hf_cfg.tie_word_embeddings,
    )
    assert ours == (hf_total, hf_active)
    assert ours == count_decoder_params(**PUBLISHED_CONFIGS["Mixtral-8x7B"])
    assert round(hf_total / 1e9, 1) == 46.7 and round(hf_active / 1e9, 1) == 12.9


def test_small_tied_mixtral_matches_hf() -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.MixtralConfig(
        vocab_size=50,
        hidden_size=12,
        intermediate_size=10,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=5,
        num_experts_per_tok=5,
        tie_word_embeddings=True,
    )
    model = transformers.MixtralForCausalLM(hf_cfg)
    ours = count_decoder_params(
        vocab_size=50,
        hidden_size=12,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        intermediate_size=10,
        n_experts=5,
        top_k=5,
        tied_embeddings=True,
    )
    assert ours == _hf_counts(model, 5, 5)
    assert ours[0] == ours[1]  # K = E: every parameter is active


def test_olmoe_and_qwen3_match_hf_on_meta_device() -> None:
    transformers = pytest.importorskip("transformers")
    olmoe = PUBLISHED_CONFIGS["OLMoE-1B-7B"]
    qwen = PUBLISHED_CONFIGS["Qwen3-30B-A3B"]
    with torch.device("meta"):
        hf_olmoe = transformers.OlmoeForCausalLM(
            transformers.OlmoeConfig(intermediate_size=olmoe["intermediate_size"])
        )
        hf_qwen = transformers.Qwen3MoeForCausalLM(
            transformers.Qwen3MoeConfig(num_hidden_layers=qwen["n_layers"], head_dim=128)
        )
    assert count_decoder_params(**olmoe) == _hf_counts(hf_olmoe, 64, 8)
    assert count_decoder_params(**qwen) == _hf_counts(hf_qwen, 128, 8)
    total, active = count_decoder_params(**qwen)
    assert (round(total / 1e9, 1), round(active / 1e9, 1)) == (30.5, 3.4)
