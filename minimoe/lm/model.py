"""A tiny decoder-only Transformer whose feed-forward layers are minimoe MoE layers.

The model is GPT-2 shaped as nanoGPT writes it (learned position embeddings, pre-norm blocks,
causal self-attention, tied input/output embeddings), with the choices of the MoE decoders of
Mixtral and OLMoE where they differ: RMSNorm, no biases, SwiGLU feed-forward layers. Every
`moe_every`-th block's feed-forward layer is a `minimoe.MoELayer` (1 = every block, as Mixtral;
2 = every other one, as Switch and GShard; 0 = none, a dense model).

`dense_twin(cfg)` is the fair dense baseline: the same model with each feed-forward layer a
dense FFN of hidden size top_k * d_ff, so a token meets the same number of FFN weights (K
experts of F, or one FFN of K*F). The MoE model's active parameters are larger only by its
routers, E*D per MoE layer (`count_params` counts both exactly).

The experts implementation is an explicit argument (`experts_fn`, any function with the
signature of `minimoe.reference_moe`); `EXPERTS_IMPLS` names the ones the command line offers.

With a capacity limit the bytes of a batch compete for expert slots. Under the "position" drop
policy a byte can lose its slot only to bytes before it in the flattened batch (earlier bytes of
its sequence, or any byte of an earlier sequence); the other policies let later bytes take it,
which leaks the future into the past. The default, dropless routing, has no such coupling.

Left out: rotary embeddings, grouped-query attention, KV caching, shared experts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minimoe.config import (
    ACTIVATIONS,
    AUX_LOSSES,
    CAPACITY_FORMULAS,
    DROP_POLICIES,
    GATINGS,
    NOISES,
    MoEConfig,
)
from minimoe.experts import ExpertsFn, ffn
from minimoe.impls import IMPLEMENTATIONS
from minimoe.layer import MoEResult
from minimoe.loop import loop_moe
from minimoe.zoo.layers import ROUTERS, inactive_params, make_moe_layer

# The experts implementations the command line offers: every registered one but the float64
# oracle (`minimoe.impls`; "triton" imports Triton on its first call). The default is the loop
# over experts: one training step (forward, backward, AdamW) of the default model, 2 blocks, D = F = 64, E = 8, K = 2, on
# 32 x 128 bytes and one CPU thread took 70 ms with it, 76 ms with grouped_mm and 57 ms for the
# dense twin (best of 6; torch 2.13). At these sizes the per-expert matmuls are too small for
# the sort and the grouped kernel to pay off.
EXPERTS_IMPLS: dict[str, ExpertsFn] = {
    name: impl.fn for name, impl in IMPLEMENTATIONS.items() if name != "reference"
}
DEFAULT_EXPERTS_IMPL = "loop"


@dataclass(frozen=True)
class LMConfig:
    """Everything that defines a `TinyLM`.

    Args:
        vocab_size: V, 256 for bytes.
        seq_len: the longest context (the size of the position embedding).
        d_model: D.
        n_layers: L, Transformer blocks.
        n_heads: attention heads (D must be a multiple).
        moe_every: every n-th block has an MoE feed-forward layer (blocks n-1, 2n-1, ...);
            0 makes a dense model.
        n_experts, top_k: E and K of each MoE layer.
        d_ff: F, each expert's hidden size; a dense block of an MoE model has top_k * F, the
            active size of an MoE block (`dense_d_ff`); in a dense model (moe_every = 0) it is F.
        activation: "swiglu" or "gelu", for experts and dense FFNs alike.
        gating, noise, capacity_formula, capacity_factor, min_capacity, drop_policy,
            aux_loss: passed to each layer's `MoEConfig` (see `minimoe.config`).
        dropout: dropout on attention weights and on each residual branch (0 = none).
        tie_embeddings: the output head reuses the input embedding matrix (as GPT-2 and nanoGPT).
        router: which MoE layer each MoE block gets, a name of `minimoe.zoo.layers.ROUTERS`
            ("token_choice", the default, is `minimoe.MoELayer`).
        router_options: extra keyword arguments of that layer (None = its defaults).
    """

    vocab_size: int = 256
    seq_len: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    moe_every: int = 1
    n_experts: int = 8
    top_k: int = 2
    d_ff: int = 64
    activation: str = "swiglu"
    gating: str = "mixtral"
    noise: str = "none"
    capacity_formula: str = "dropless"
    capacity_factor: float = 1.25
    min_capacity: int = 0
    drop_policy: str = "position"
    aux_loss: str = "switch"
    dropout: float = 0.0
    tie_embeddings: bool = True
    router: str = "token_choice"
    router_options: dict | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if not isinstance(self.moe_every, int) or self.moe_every < 0:
            raise ValueError(f"moe_every must be an int >= 0, got {self.moe_every!r}")
        if self.moe_every > self.n_layers:
            raise ValueError(
                f"moe_every={self.moe_every} > n_layers={self.n_layers} leaves no MoE layer; "
                "use moe_every=0 for a dense model"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in [
            ("activation", ACTIVATIONS),
            ("gating", GATINGS),
            ("noise", NOISES),
            ("capacity_formula", CAPACITY_FORMULAS),
            ("drop_policy", DROP_POLICIES),
            ("aux_loss", AUX_LOSSES),
            ("router", ROUTERS),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        self.moe_config()  # validates d_ff, n_experts, top_k and the capacity settings

    def is_moe_layer(self, i: int) -> bool:
        """Whether block i (0-based) has an MoE feed-forward layer."""
        return self.moe_every > 0 and (i + 1) % self.moe_every == 0

    @property
    def dense_d_ff(self) -> int:
        """The hidden size of the dense blocks: top_k * d_ff in an MoE model, d_ff in a dense one."""
        return self.d_ff if self.moe_every == 0 else self.top_k * self.d_ff

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    def moe_config(self, seed: int = 0) -> MoEConfig:
        """The `MoEConfig` of this model's MoE layers (`seed` seeds the "random" drop policy)."""
        return MoEConfig(
            d_model=self.d_model,
            d_ff=self.d_ff,
            n_experts=self.n_experts,
            top_k=self.top_k,
            activation=self.activation,
            gating=self.gating,
            noise=self.noise,
            capacity_formula=self.capacity_formula,
            capacity_factor=self.capacity_factor,
            min_capacity=self.min_capacity,
            drop_policy=self.drop_policy,
            aux_loss=self.aux_loss,
            seed=seed,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def dense_twin(cfg: LMConfig) -> LMConfig:
    """The dense model with the same active FFN weights per token: every block dense, of hidden
    size top_k * d_ff, same activation (a dense config is its own twin). The dense blocks of an
    MoE model with moe_every > 1 already have that size, so they are unchanged.

    Args:
        cfg: an `LMConfig`.

    Returns:
        An `LMConfig` with moe_every = 0, n_experts = top_k = 1 and d_ff = top_k * cfg.d_ff.
    """
    if not isinstance(cfg, LMConfig):
        raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
    if cfg.moe_every == 0:
        return cfg
    return replace(cfg, moe_every=0, n_experts=1, top_k=1, d_ff=cfg.top_k * cfg.d_ff)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with the fused kernel (F.scaled_dot_product_attention)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        D, H = x_BSD.shape[-1], self.n_heads
        q, k, v = self.qkv(x_BSD).split(D, dim=-1)
        q, k, v = (rearrange(t, "b s (head d) -> b head s d", head=H) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.proj(rearrange(y, "b head s d -> b s (head d)"))


class DenseFFN(nn.Module):
    """A dense feed-forward layer with the experts' weight layout and initialisation."""

    def __init__(self, d_model: int, d_ff: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.w1_FD = nn.Parameter(torch.randn(d_ff, d_model) / d_model**0.5)
        self.w2_DF = nn.Parameter(torch.randn(d_model, d_ff) / d_ff**0.5)
        self.w3_FD = (
            nn.Parameter(torch.randn(d_ff, d_model) / d_model**0.5)
            if activation == "swiglu"
            else None
        )

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        return ffn(x_BSD, self.w1_FD, self.w2_DF, self.w3_FD, self.activation)


class Block(nn.Module):
    """x + attn(norm(x)), then x + ffn(norm(x)); the FFN is an MoE layer or a `DenseFFN`.

    The MoE layer is `cfg.router`'s (`minimoe.zoo.layers.make_moe_layer`; an `MoELayer` for
    "token_choice"); `moe_index` is its rank among the MoE blocks, `shared` a dict every block
    of the model shares (a recurrent router's cell). A layer with `uses_context` gets the
    forward pass's context dict (the token ids, a recurrent router's state).
    """

    def __init__(
        self,
        cfg: LMConfig,
        moe: bool,
        experts_fn: ExpertsFn,
        seed: int,
        moe_index: int = 0,
        shared: dict | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.ffn = (
            make_moe_layer(
                cfg.router,
                cfg.moe_config(seed),
                layer_index=moe_index,
                n_moe_layers=cfg.n_moe_layers,
                shared=shared,
                experts_fn=experts_fn,
                group_size=cfg.seq_len,
                vocab_size=cfg.vocab_size,
                options=cfg.router_options,
            )
            if moe
            else DenseFFN(cfg.d_model, cfg.dense_d_ff, cfg.activation)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x_BSD: torch.Tensor, context: dict | None = None
    ) -> tuple[torch.Tensor, MoEResult | None]:
        x_BSD = x_BSD + self.drop(self.attn(self.norm1(x_BSD)))
        result = None
        if isinstance(self.ffn, DenseFFN):
            h_BSD = self.ffn(self.norm2(x_BSD))
        elif getattr(self.ffn, "uses_context", False):
            h_BSD, result = self.ffn(self.norm2(x_BSD), context=context)
        else:
            h_BSD, result = self.ffn(self.norm2(x_BSD))
        return x_BSD + self.drop(h_BSD), result


class TinyLM(nn.Module):
    """A byte-level decoder-only language model with MoE feed-forward layers.

    Args:
        cfg: the `LMConfig`.
        experts_fn: the experts implementation of every MoE layer (see `EXPERTS_IMPLS`).
    """

    def __init__(self, cfg: LMConfig, *, experts_fn: ExpertsFn = loop_moe) -> None:
        super().__init__()
        if not isinstance(cfg, LMConfig):
            raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        moe_index = [sum(cfg.is_moe_layer(j) for j in range(i)) for i in range(cfg.n_layers)]
        shared: dict = {}  # what the MoE layers of this model share (a recurrent router's cell)
        self.blocks = nn.ModuleList(
            Block(cfg, cfg.is_moe_layer(i), experts_fn, i, moe_index[i], shared)
            for i in range(cfg.n_layers)
        )
        self.norm = nn.RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for module in [self.wte, self.wpe, *(b.attn for b in self.blocks)]:
            for p in module.parameters():
                nn.init.normal_(p, std=0.02)  # GPT-2's initialisation
        for b in self.blocks:  # GPT-2: scale the residual projections by 1/sqrt(2L)
            nn.init.normal_(b.attn.proj.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    @property
    def moe_layers(self) -> list[nn.Module]:
        """The MoE layers (an `MoELayer`, or the zoo layer of `cfg.router`), in depth order."""
        return [b.ffn for b in self.blocks if not isinstance(b.ffn, DenseFFN)]

    def forward(self, idx_BS: torch.Tensor) -> tuple[torch.Tensor, list[MoEResult]]:
        """idx_BS: (B, S) int64 byte ids, S <= seq_len.

        Returns:
            logits_BSV: next-byte logits at every position.
            moe_results: one `MoEResult` per MoE layer, in depth order (empty for a dense model).
        """
        if idx_BS.dim() != 2 or idx_BS.dtype != torch.int64:
            raise ValueError(
                f"idx_BS must be a (B, S) int64 tensor, got {idx_BS.dtype} {tuple(idx_BS.shape)}"
            )
        B, S = idx_BS.shape
        if S > self.cfg.seq_len:
            raise ValueError(f"sequence length {S} > the model's seq_len={self.cfg.seq_len}")
        pos_S = torch.arange(S, device=idx_BS.device)
        x_BSD = self.wte(idx_BS) + self.wpe(pos_S)
        results = []
        context: dict = {"token_ids": idx_BS}  # one per pass: what routers may read (hash ids)
        for block in self.blocks:
            x_BSD, result = block(x_BSD, context)
            if result is not None:
                results.append(result)
        return self.lm_head(self.norm(x_BSD)), results


def count_params(model: TinyLM) -> tuple[int, int]:
    """Total and active (per token) parameters of a `TinyLM`.

    A tied output head is counted once. Active = total minus, in every MoE layer, the weights of
    the E - K experts a token does not use; the router (and its noise weights) count as active.
    A zoo layer says what a token does not use itself (`minimoe.zoo.layers.inactive_params`).

    Returns:
        (total, active) as ints.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    total = sum(p.numel() for p in model.parameters())  # shared tensors are yielded once
    inactive = sum(inactive_params(layer) for layer in model.moe_layers)
    return total, total - inactive
