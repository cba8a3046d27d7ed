"""Parameter counting: total and active parameters of an MoE layer and of a whole MoE decoder.

An MoE model stores every expert but runs only K of the E experts on each token, so it has two
sizes: the *total* parameters (memory) and the *active* parameters per token (compute). For a
decoder in the Mixtral / OLMoE / Qwen3-MoE family (pre-norm, RMSNorm without bias, attention
without bias, SwiGLU experts, a bias-free linear router):

    per layer   attention  D*(H*hd) + 2*D*(Hkv*hd) + (H*hd)*D      (q, k, v, o; hd = head dim)
                qk-norm    "full": H*hd + Hkv*hd (OLMoE); "head": 2*hd (Qwen3); "none": 0 (Mixtral)
                norms      2*D                                        (before attention and MLP)
                router     E*D
                experts    E * 3*D*F   (SwiGLU: w1, w3, w2; GELU: 2*D*F)
    model       embeddings V*D, lm_head V*D unless tied, final norm D

    active = total - (E - K) * (one expert's weights) * layers

Published figures these formulas reproduce exactly (checked against HF transformers' own models,
built on the meta device, in tests/core/test_params.py): Mixtral 8x7B 46.7B total / 12.9B active
(arXiv 2401.04088), OLMoE-1B-7B 6.9B / 1.3B (arXiv 2409.02060), Qwen3-30B-A3B 30.5B / 3.3B
(the Qwen3 technical report, arXiv 2505.09388). Left out: shared experts, dense layers mixed
with MoE layers, biases, multi-token-prediction heads and DeepSeek's MLA attention.
"""

from __future__ import annotations

from minimoe.config import MoEConfig
from minimoe.experts import n_matrices
from minimoe.validate import check_bool, check_int, check_optional_int

QK_NORMS = ("none", "full", "head")

# Config numbers from each model's published config.json on the Hugging Face Hub
# (mistralai/Mixtral-8x7B-v0.1, allenai/OLMoE-1B-7B-0924, Qwen/Qwen3-30B-A3B).
PUBLISHED_CONFIGS: dict[str, dict] = {
    "Mixtral-8x7B": dict(
        vocab_size=32000,
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14336,
        n_experts=8,
        top_k=2,
        tied_embeddings=False,
    ),
    "OLMoE-1B-7B": dict(
        vocab_size=50304,
        hidden_size=2048,
        n_layers=16,
        n_heads=16,
        n_kv_heads=16,
        intermediate_size=1024,
        n_experts=64,
        top_k=8,
        tied_embeddings=False,
        qk_norm="full",
    ),
    "Qwen3-30B-A3B": dict(
        vocab_size=151936,
        hidden_size=2048,
        n_layers=48,
        n_heads=32,
        n_kv_heads=4,
        intermediate_size=768,
        n_experts=128,
        top_k=8,
        tied_embeddings=False,
        head_dim=128,
        qk_norm="head",
    ),
}


def _expert_params(d_model: int, d_ff: int, activation: str) -> int:
    """Weights of one expert: w1, w2 (and w3 for SwiGLU), no biases."""
    return n_matrices(activation) * d_model * d_ff


def count_moe_params(cfg: MoEConfig) -> tuple[int, int]:
    """Total and active (per token) parameters of one `MoELayer` built from `cfg`.

    The router (E*D, plus E*D noise weights for Shazeer noise) is always active; of the E experts,
    K are active per token. The total equals `sum(p.numel() for p in MoELayer(cfg).parameters())`.

    Args:
        cfg: the layer's `MoEConfig`.

    Returns:
        (total, active) as ints.
    """
    if not isinstance(cfg, MoEConfig):
        raise TypeError(f"cfg must be a MoEConfig, got {type(cfg).__name__}")
    router = cfg.n_experts * cfg.d_model * (2 if cfg.noise == "shazeer" else 1)
    expert = _expert_params(cfg.d_model, cfg.d_ff, cfg.activation)
    return router + cfg.n_experts * expert, router + cfg.top_k * expert


def count_decoder_params(
    *,
    vocab_size: int,
    hidden_size: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    intermediate_size: int,
    n_experts: int,
    top_k: int,
    tied_embeddings: bool = False,
    head_dim: int | None = None,
    qk_norm: str = "none",
    activation: str = "swiglu",
) -> tuple[int, int]:
    """Total and active parameters of an MoE decoder where every layer's MLP is an MoE layer.

    Args:
        vocab_size: V.
        hidden_size: D.
        n_layers: L, decoder layers.
        n_heads, n_kv_heads: query heads and key/value heads (grouped-query attention).
        intermediate_size: F, each expert's hidden size.
        n_experts, top_k: E and K.
        tied_embeddings: the output head shares the input embedding matrix.
        head_dim: per-head size; None means D // n_heads.
        qk_norm: "none" (Mixtral), "full" (OLMoE: RMSNorm over all of q and of k) or "head"
            (Qwen3: RMSNorm over each head, weights shared across heads).
        activation: "swiglu" (3 matrices per expert), "gelu" or "relu" (2).

    Returns:
        (total, active) as ints; active counts the embeddings, attention, norms, router and K
        experts per layer.
    """
    sizes = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        intermediate_size=intermediate_size,
        n_experts=n_experts,
        top_k=top_k,
    )
    for name, value in sizes.items():
        check_int(name, value, low=1)
    check_bool("tied_embeddings", tied_embeddings)
    check_optional_int("head_dim", head_dim, low=1)
    if top_k > n_experts:
        raise ValueError(f"top_k={top_k} > n_experts={n_experts}")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
    if qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm={qk_norm!r} is not one of {QK_NORMS}")
    if head_dim is None:
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size={hidden_size} is not a multiple of n_heads={n_heads}")
        head_dim = hidden_size // n_heads
    D, q_dim, kv_dim = hidden_size, n_heads * head_dim, n_kv_heads * head_dim

    attention = D * q_dim + 2 * D * kv_dim + q_dim * D
    attention += {"none": 0, "full": q_dim + kv_dim, "head": 2 * head_dim}[qk_norm]
    expert = _expert_params(D, intermediate_size, activation)
    shared_per_layer = attention + 2 * D + n_experts * D  # attention, two norms, router
    embeddings = vocab_size * D * (1 if tied_embeddings else 2)

    total = embeddings + D + n_layers * (shared_per_layer + n_experts * expert)
    active = embeddings + D + n_layers * (shared_per_layer + top_k * expert)
    return total, active
