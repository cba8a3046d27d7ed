"""Routing statistics: how evenly the experts are used, how much is dropped, how sure the router is.

These are the numbers to watch for router collapse (everything on one expert) and for capacity
overflow. They are computed without gradient and returned, never stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minimoe.validate import (
    check_expert_ids,
    check_float_tensor,
    check_index_tensor,
    check_int,
    check_mask,
    check_shape,
)


@dataclass
class RoutingStats:
    """Attributes:
    routed_E: slots each expert was chosen for, before capacity drops.
    load_E: slots each expert actually processed (after drops).
    drop_rate: fraction of the T*K slots dropped.
    entropy: mean per-token entropy of the router distribution, in nats (log E = undecided).
    load_entropy: entropy of the normalised load, in nats (log E = perfectly even).
    cv: coefficient of variation (std / mean) of `routed_E`; 0 is perfect balance.
    dead_experts: experts that were chosen for no slot.
    max_over_mean: largest load over mean load (1 = perfect balance, E = collapse at K=1).
    """

    routed_E: torch.Tensor
    load_E: torch.Tensor
    drop_rate: float
    entropy: float
    load_entropy: float
    cv: float
    dead_experts: int
    max_over_mean: float


@torch.no_grad()
def routing_stats(
    expert_TK: torch.Tensor,
    n_experts: int,
    *,
    keep_TK: torch.Tensor | None = None,
    probs_TE: torch.Tensor | None = None,
) -> RoutingStats:
    """Summarise one routing decision.

    Args:
        expert_TK: chosen experts.
        n_experts: E.
        keep_TK: surviving slots (None: all kept).
        probs_TE: the router distribution, for the per-token entropy (None: reported as nan).
    """
    check_index_tensor("expert_TK", expert_TK, dim=2)
    check_int("n_experts", n_experts, low=1)
    if keep_TK is not None:
        check_mask("keep_TK", keep_TK, tuple(expert_TK.shape))
    if probs_TE is not None:
        check_float_tensor("probs_TE", probs_TE, dim=2)
        check_shape("probs_TE", probs_TE, (expert_TK.shape[0], n_experts), " (T, n_experts)")
    check_expert_ids(expert_TK, n_experts)
    return _routing_stats(expert_TK, n_experts, keep_TK, probs_TE)


@torch.no_grad()
def _routing_stats(expert_TK, n_experts, keep_TK, probs_TE) -> RoutingStats:
    """`routing_stats` without the checks."""
    flat = expert_TK.reshape(-1).long()
    routed_E = torch.bincount(flat, minlength=n_experts)
    kept = flat if keep_TK is None else flat[keep_TK.reshape(-1)]
    load_E = torch.bincount(kept, minlength=n_experts)
    n = flat.numel()
    drop_rate = 0.0 if n == 0 else 1.0 - kept.numel() / n
    if probs_TE is not None and probs_TE.shape[0] > 0:
        p = probs_TE.float()
        p = p / p.sum(-1, keepdim=True)
        entropy = float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
    else:
        entropy = math.nan
    r = routed_E.double()
    mean = r.mean()
    if n == 0:
        load_entropy, cv, max_over_mean = math.nan, math.nan, math.nan
    else:
        q = r / r.sum()
        load_entropy = float(-(q * q.clamp_min(1e-30).log()).sum())
        cv = float(r.std(unbiased=False) / mean)
        max_over_mean = float(r.max() / mean)
    return RoutingStats(
        routed_E=routed_E,
        load_E=load_E,
        drop_rate=drop_rate,
        entropy=entropy,
        load_entropy=load_entropy,
        cv=cv,
        dead_experts=int((routed_E == 0).sum()),
        max_over_mean=max_over_mean,
    )
