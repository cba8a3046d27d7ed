"""Named, seeded input batches for the explorers: token vectors to route, and routings to cap.

Token batches (for the routing explorer), each (T, D):
- "random": x ~ N(0, 1); a fresh router spreads it about evenly;
- "clustered": tokens around a few centres, as repeated words are; each cluster tends to land on
  the same experts, so the load follows the cluster sizes;
- "skewed": every token shares one large common direction (think of an un-normalised mean
  activation), so one expert wins most tokens: the start of router collapse.

Routing batches (for the capacity explorer), each (expert_TK, gate_TK) made by `minimoe.route`
from seeded router logits:
- "balanced": logits ~ N(0, 1), every expert about T*K/E slots;
- "skewed": logits plus a per-expert offset that falls off with the expert index, so the
  first experts overflow (a router part-way to collapse).

Everything is deterministic for a given seed (a private `torch.Generator`).
"""

from __future__ import annotations

import torch

from minimoe.routing import route

TOKEN_BATCHES = ("random", "clustered", "skewed")
ROUTING_BATCHES = ("balanced", "skewed")


def token_batch(name: str, n_tokens: int = 256, d_model: int = 32, seed: int = 0) -> torch.Tensor:
    """A named batch of token vectors.

    Args:
        name: "random", "clustered" or "skewed" (see the module docstring).
        n_tokens, d_model: T and D.
        seed: the batch's seed.

    Returns:
        x_TD, float32.
    """
    if name not in TOKEN_BATCHES:
        raise ValueError(f"batch {name!r} is not one of {TOKEN_BATCHES}")
    if n_tokens < 0 or d_model < 1:
        raise ValueError(f"bad sizes: n_tokens={n_tokens}, d_model={d_model}")
    gen = torch.Generator().manual_seed(seed)
    noise_TD = torch.randn(n_tokens, d_model, generator=gen)
    if name == "random":
        return noise_TD
    if name == "clustered":
        n_clusters = 6
        centres_CD = 2.0 * torch.randn(n_clusters, d_model, generator=gen)
        # uneven cluster sizes, like word frequencies
        weights_C = 1.0 / torch.arange(1, n_clusters + 1, dtype=torch.float32)
        cluster_T = torch.multinomial(weights_C, n_tokens, replacement=True, generator=gen)
        return centres_CD[cluster_T] + 0.5 * noise_TD
    common_D = torch.randn(d_model, generator=gen)
    common_D = 3.0 * common_D / common_D.norm() * d_model**0.5
    return common_D + noise_TD


def routing_batch(
    name: str,
    n_tokens: int = 256,
    n_experts: int = 8,
    top_k: int = 2,
    *,
    gating: str = "mixtral",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A named routing decision, made by `minimoe.route` from seeded logits.

    Args:
        name: "balanced" or "skewed" (see the module docstring).
        n_tokens, n_experts, top_k: T, E, K.
        gating: the gating convention passed to `route`.
        seed: the batch's seed.

    Returns:
        (expert_TK, gate_TK).
    """
    if name not in ROUTING_BATCHES:
        raise ValueError(f"routing batch {name!r} is not one of {ROUTING_BATCHES}")
    gen = torch.Generator().manual_seed(seed)
    logits_TE = torch.randn(n_tokens, n_experts, generator=gen)
    if name == "skewed":
        # expert 0 gets +2, falling linearly to 0 for the last expert
        logits_TE = logits_TE + torch.linspace(2.0, 0.0, n_experts)
    r = route(logits_TE, top_k, gating)
    return r.expert_TK, r.gate_TK
