"""The `MoEShape` of real models and of the course's tiny LM.

The real models' shapes come from transformers' configuration classes (no weights, no download;
transformers is imported on first use: the library core does not depend on it), each set to its
published config.json where the class default differs (sources in `docs/conventions.md`,
"Serving"). `meta_param_count` builds transformers' own model on the meta device and counts its
parameters, to check the shapes here against it.
"""

from __future__ import annotations

from minimoe.serving.roofline import MoEShape

__all__ = [
    "REAL_MODELS",
    "meta_param_count",
    "real_model_config",
    "real_model_shape",
    "shape_from_config",
    "shape_from_lm",
]

# name -> (config class, the published config.json values that differ from the class defaults)
_REAL = {
    "Mixtral-8x7B": ("MixtralConfig", {}),
    "Qwen3-30B-A3B": (
        "Qwen3MoeConfig",
        {"num_hidden_layers": 48, "head_dim": 128, "norm_topk_prob": True},
    ),
    "DeepSeek-V3": ("DeepseekV3Config", {}),
    "OLMoE-1B-7B": ("OlmoeConfig", {"intermediate_size": 1024}),
}
REAL_MODELS: tuple[str, ...] = tuple(_REAL)


def real_model_config(name: str):
    """The transformers configuration of a real model: its class, set to the published values."""
    if name not in _REAL:
        raise ValueError(f"name must be one of {REAL_MODELS}, got {name!r}")
    import transformers

    cls_name, overrides = _REAL[name]
    return getattr(transformers, cls_name)(**overrides)


def _gqa(D: int, heads: int, kv_heads: int, head_dim: int) -> tuple[int, int, int]:
    """(attention weights, KV elements per position, attention FLOPs per position) of GQA."""
    params = D * heads * head_dim + 2 * D * kv_heads * head_dim + heads * head_dim * D
    return params, 2 * kv_heads * head_dim, 4 * heads * head_dim


def shape_from_config(config, name: str | None = None) -> MoEShape:
    """A `MoEShape` from a transformers configuration of Mixtral, Qwen3-MoE, DeepSeek-V3 or OLMoE.

    DeepSeek-V3's attention is multi-head latent attention (arXiv 2405.04434, section 2.1): it
    caches kv_lora_rank + qk_rope_head_dim elements per position and layer, and (with the up
    projections absorbed into the query and output, as its inference code does) its attention
    reads that latent per head: 2 * H * (kv_lora_rank + rope) FLOPs for the scores and
    2 * H * kv_lora_rank for the weighted sum. Its multi-token-prediction module is not counted.
    """
    kind = getattr(config, "model_type", None)
    D, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    H = config.num_attention_heads
    tie = bool(getattr(config, "tie_word_embeddings", False))
    name = name or kind
    if kind in ("mixtral", "qwen3_moe", "olmoe"):
        head_dim = getattr(config, "head_dim", None) or D // H
        attn, kv, flops = _gqa(D, H, config.num_key_value_heads, head_dim)
        if kind == "mixtral":
            E, F_e = config.num_local_experts, config.intermediate_size
        elif kind == "qwen3_moe":
            E, F_e = config.num_experts, config.moe_intermediate_size
            if config.mlp_only_layers or config.decoder_sparse_step != 1:
                raise ValueError("only Qwen3-MoE configs with every layer MoE are supported")
        else:
            E, F_e = config.num_experts, config.intermediate_size
        return MoEShape(
            name, D, L, 0, E, config.num_experts_per_tok, F_e, 0, 0, 0, V, attn, kv, flops, tie
        )
    if kind == "deepseek_v3":
        q_rank, kv_rank = config.q_lora_rank, config.kv_lora_rank
        rope, nope, v_dim = config.qk_rope_head_dim, config.qk_nope_head_dim, config.v_head_dim
        attn = (
            D * q_rank
            + q_rank * H * (nope + rope)
            + D * (kv_rank + rope)
            + kv_rank * H * (nope + v_dim)
            + H * v_dim * D
        )
        return MoEShape(
            name,
            D,
            L,
            config.first_k_dense_replace,
            config.n_routed_experts,
            config.num_experts_per_tok,
            config.moe_intermediate_size,
            config.n_shared_experts,
            config.moe_intermediate_size,
            config.intermediate_size,
            V,
            attn,
            kv_rank + rope,
            2 * H * (kv_rank + rope) + 2 * H * kv_rank,
            tie,
        )
    raise ValueError(f"unsupported model_type {kind!r} (Mixtral, Qwen3-MoE, DeepSeek-V3, OLMoE)")


def real_model_shape(name: str) -> MoEShape:
    """The `MoEShape` of one of `REAL_MODELS`."""
    return shape_from_config(real_model_config(name), name)


def meta_param_count(config) -> int:
    """Parameters of transformers' own model for `config`, built on the meta device (no memory,
    no download); tied weights are counted once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def shape_from_lm(cfg) -> MoEShape:
    """The `MoEShape` of a `minimoe.lm.LMConfig` (multi-head attention, tied embeddings)."""
    from minimoe.lm.model import LMConfig  # the model package is only needed here

    if not isinstance(cfg, LMConfig):
        raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
    D = cfg.d_model
    matrices = 3 if cfg.activation == "swiglu" else 2
    n_moe = cfg.n_moe_layers
    attn, kv, flops = _gqa(D, cfg.n_heads, cfg.n_heads, D // cfg.n_heads)
    return MoEShape(
        "tiny LM",
        D,
        cfg.n_layers,
        cfg.n_layers - n_moe,
        cfg.n_experts,
        cfg.top_k,
        cfg.d_ff if n_moe else 0,
        0,
        0,
        cfg.dense_d_ff,
        cfg.vocab_size,
        attn,
        kv,
        flops,
        cfg.tie_embeddings,
        matrices,
    )
