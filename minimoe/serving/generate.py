"""Generation with the tiny MoE LM: a KV cache, sampling, and the routing trace of every token.

`TinyLM.forward` recomputes every position of the context for each new byte. Decoding with a
KV cache keeps each layer's keys and values of the positions already seen, so a step computes
only the new position: its query attends to the cached keys and values plus its own. This module
runs the model's own submodules step by step (`wte`, `wpe`, each block's `norm1`, `attn.qkv`,
`attn.proj`, `norm2`, `ffn`, then `norm` and `lm_head`), so the cached decoder and
`TinyLM.forward` compute the same function (the tests compare their logits).

Two phases, as in every serving stack: the prefill runs the prompt's S positions at once (S rows
per matmul: compute-bound on a GPU), then each decode step runs one position (one row: the
weights are read for a single token, memory-bound). `prefill="token"` feeds the prompt one byte
at a time instead, so every MoE layer sees one token per call: the offloaded runtime uses it, so
that it requests experts in the trace's order (token, then layer, then k).

The model's position embedding is learned for seq_len positions. When the context is full, the
cache is rebuilt from the last seq_len // 2 bytes (positions restart at 0), as nanoGPT's
`generate` crops its context to the block size; the rebuild's forward passes are in the trace.

Sampling: logits / temperature, optionally only the `top_k` largest, softmax, one draw from a
seeded `torch.Generator`; temperature 0 is greedy (argmax).

Left out: batched generation, stop sequences, nucleus (top-p) sampling, speculative decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from minimoe.layer import MoELayer
from minimoe.lm.model import TinyLM
from minimoe.serving.trace import RoutingTrace
from minimoe.validate import check_choice, check_int, check_real

__all__ = ["GenerationResult", "KVCache", "forward_cached", "generate", "sample_next"]


class KVCache:
    """The keys and values of every layer for the positions seen so far (one sequence batch).

    Attributes:
        k, v: per layer, a (B, heads, P, head_dim) tensor, P = `length` positions (None before
            the first step).
    """

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add layer i's new keys and values; return all of them."""
        old_k, old_v = self.k[i], self.v[i]
        self.k[i] = k if old_k is None else torch.cat([old_k, k], dim=2)
        self.v[i] = v if old_v is None else torch.cat([old_v, v], dim=2)
        return self.k[i], self.v[i]


def _attend(block, x_BSD: torch.Tensor, cache: KVCache, i: int, start: int) -> torch.Tensor:
    """Block i's attention for S new positions, after `start` cached ones."""
    attn = block.attn
    D, H = x_BSD.shape[-1], attn.n_heads
    q, k, v = attn.qkv(x_BSD).split(D, dim=-1)
    q, k, v = (rearrange(t, "b s (head d) -> b head s d", head=H) for t in (q, k, v))
    k, v = cache.append(i, k, v)
    S, P = q.shape[2], k.shape[2]
    # new position start + s sees the cached ones and the new ones up to itself
    mask_SP = (
        torch.arange(P, device=q.device)[None, :]
        <= (start + torch.arange(S, device=q.device))[:, None]
    )
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_SP)
    return attn.proj(rearrange(y, "b head s d -> b s (head d)"))


@torch.no_grad()
def forward_cached(
    model: TinyLM, idx_BS: torch.Tensor, cache: KVCache
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run S new positions through the model, reading and extending the cache.

    Args:
        model: a `TinyLM` (put it in eval mode: router noise and dropout off).
        idx_BS: (B, S) int64 byte ids of the new positions.
        cache: the `KVCache` of the positions before them (empty for the first call).

    Returns:
        logits_BSV: next-byte logits at the new positions.
        expert_TK: per MoE layer, the experts chosen for the B*S new tokens (router order).
    """
    B, S = idx_BS.shape
    start = cache.length
    if start + S > model.cfg.seq_len:
        raise ValueError(f"{start} cached + {S} new positions > seq_len={model.cfg.seq_len}")
    pos_S = torch.arange(start, start + S, device=idx_BS.device)
    x_BSD = model.wte(idx_BS) + model.wpe(pos_S)
    experts = []
    for i, block in enumerate(model.blocks):
        x_BSD = x_BSD + _attend(block, block.norm1(x_BSD), cache, i, start)
        if isinstance(block.ffn, MoELayer):
            h_BSD, result = block.ffn(block.norm2(x_BSD))
            experts.append(result.routing.expert_TK)
        else:
            h_BSD = block.ffn(block.norm2(x_BSD))
        x_BSD = x_BSD + h_BSD
    return model.lm_head(model.norm(x_BSD)), experts


def sample_next(
    logits_V: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator,
) -> int:
    """One byte from next-byte logits: greedy at temperature 0, else softmax(logits / T) over
    the `top_k` largest (all when None), drawn with `generator`."""
    if temperature == 0:
        return int(logits_V.argmax())
    logits_V = logits_V.float() / temperature
    if top_k is not None and top_k < logits_V.numel():
        kth = torch.topk(logits_V, top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    probs_V = torch.softmax(logits_V, dim=-1)
    return int(torch.multinomial(probs_V, 1, generator=generator))


@dataclass
class GenerationResult:
    """What `generate` returns.

    Attributes:
        prompt, new: the prompt's bytes and the generated ones.
        trace: the experts of every token run (prompt, generated, and any context rebuild), or
            None for a dense model.
        inputs: the byte at each position run through the model, in order (the trace has one
            step per input).
        forward_tokens: positions run through the model (len(inputs)).
        seconds: wall time of the generation; tokens_per_s: new bytes per second.
    """

    prompt: bytes
    new: bytes
    trace: RoutingTrace | None
    inputs: list[int]
    seconds: float

    @property
    def forward_tokens(self) -> int:
        return len(self.inputs)

    @property
    def text(self) -> str:
        """Prompt and continuation, decoded as UTF-8 (invalid bytes replaced)."""
        return (self.prompt + self.new).decode("utf-8", errors="replace")

    @property
    def tokens_per_s(self) -> float:
        return len(self.new) / self.seconds if self.seconds > 0 else float("inf")


def generate(
    model: TinyLM,
    prompt: bytes,
    n_new: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    prefill: str = "chunk",
) -> GenerationResult:
    """Continue `prompt` by `n_new` bytes with the KV cache, recording the routing.

    Args:
        model: a `TinyLM` (run in eval mode; its mode is restored afterwards).
        prompt: at least one byte (a byte-level model has no start token).
        n_new: bytes to generate (>= 0).
        temperature: 0 for greedy decoding, else the softmax temperature (> 0).
        top_k: sample among the k most likely bytes only (None: all 256).
        seed: seeds the sampling generator: same seed, same text.
        prefill: "chunk" (the prompt in one forward pass) or "token" (one byte per pass).

    Returns:
        A `GenerationResult`.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    if isinstance(prompt, str):
        raise TypeError("prompt must be bytes (encode a str with .encode())")
    if not isinstance(prompt, (bytes, bytearray)) or len(prompt) == 0:
        raise ValueError("prompt must be non-empty bytes")
    n_new = check_int("n_new", n_new, low=0)
    temperature = check_real("temperature", temperature, low=0.0)
    if top_k is not None:
        top_k = check_int("top_k", top_k, low=1)
    check_int("seed", seed)
    check_choice("prefill", prefill, ("chunk", "token"))
    cfg = model.cfg
    device = next(model.parameters()).device
    trace = RoutingTrace(cfg.n_experts, cfg.n_moe_layers, cfg.top_k) if cfg.n_moe_layers else None
    generator = torch.Generator().manual_seed(seed)
    context = list(bytes(prompt))[-cfg.seq_len :]
    new: list[int] = []
    inputs: list[int] = []
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:

        def run(ids: list[int], cache: KVCache) -> torch.Tensor:
            inputs.extend(ids)
            chunks = [ids] if prefill == "chunk" else [[b] for b in ids]
            logits = None
            for chunk in chunks:
                idx_1S = torch.tensor([chunk], dtype=torch.int64, device=device)
                logits_1SV, experts = forward_cached(model, idx_1S, cache)
                if trace is not None:
                    for s in range(len(chunk)):
                        trace.append(torch.stack([e_TK[s] for e_TK in experts]))
                logits = logits_1SV[0, -1]
            return logits

        cache = KVCache(cfg.n_layers)
        logits_V = run(context, cache) if n_new else None
        for step in range(n_new):
            byte = sample_next(logits_V, temperature, top_k, generator)
            new.append(byte)
            context.append(byte)
            if step == n_new - 1:
                break
            if cache.length == cfg.seq_len:  # full: rebuild from the last half of the context
                context = context[-(cfg.seq_len // 2) :]
                cache = KVCache(cfg.n_layers)
                logits_V = run(context, cache)
            else:
                logits_V = run([byte], cache)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return GenerationResult(bytes(prompt), bytes(new), trace, inputs, seconds)
