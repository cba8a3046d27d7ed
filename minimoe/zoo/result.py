"""What every layer of the zoo returns beside its output: losses, the routing, statistics on demand.

    y, result = layer(x)        # result.aux_loss, result.z_loss, result.stats (a RoutingStats)

The same attributes as `minimoe.MoEResult`, so the tiny LM's trainer, its recorder and the collapse
lab treat every router alike. `routing` is the token-major `minimoe.Routing` when the router makes
one (top-k choices per token), else None (expert choice and Soft MoE choose per expert or not
at all); `logits` is the router's logits in any shape, for the largest-logit statistic.

The statistics keep `RoutingStats`'s fields, with one reading per router family, given in each
layer's docstring; `RoutingStats.drop_rate` is always "the share of the work a token was owed that
it did not get" (dropped slots for token choice, tokens no expert took for expert choice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from minimoe.losses import _load_balancing_loss, z_loss
from minimoe.metrics import RoutingStats, _routing_stats
from minimoe.routing import Routing

__all__ = [
    "ZooResult",
    "padded_stats",
    "stats_from_counts",
    "token_choice_losses",
    "token_choice_stats",
]


@dataclass
class ZooResult:
    """Attributes:
    aux_loss: the load-balancing loss the layer asks for (0 where balance is by construction).
    z_loss: the router z-loss of its logits (0 for a router without logits).
    routing: the token-major `Routing`, or None.
    logits: the router logits in the layer's own shape (None for hash routing).
    extra: router-specific tensors (e.g. expert choice's token_EC), for plots and tests.
    stats: `RoutingStats` of this pass, computed when first read.
    """

    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    routing: Routing | None
    logits: torch.Tensor | None
    stats_fn: Callable[[], RoutingStats] = field(repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    @cached_property
    def stats(self) -> RoutingStats:
        return self.stats_fn()


def padded_stats(stats: RoutingStats, width: int | None) -> RoutingStats:
    """The same statistics with routed_E and load_E padded with zeros to `width` experts.

    For a pyramid of layers with different E: the LM's recorder stacks every layer's load
    vectors, so a narrower layer pads to the widest; the scalars (dead experts, max/mean) are
    those of the layer's own E.
    """
    E = stats.routed_E.numel()
    if width is None or width == E:
        return stats
    if width < E:
        raise ValueError(f"width={width} is smaller than the layer's {E} experts")
    pad = (0, width - E)
    return RoutingStats(
        routed_E=F.pad(stats.routed_E, pad),
        load_E=F.pad(stats.load_E, pad),
        drop_rate=stats.drop_rate,
        entropy=stats.entropy,
        load_entropy=stats.load_entropy,
        cv=stats.cv,
        dead_experts=stats.dead_experts,
        max_over_mean=stats.max_over_mean,
    )


def token_choice_losses(
    routing: Routing, aux: str, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux_loss, z_loss) of a token-major routing: the Switch loss (or 0) and the z-loss."""
    if aux == "none":
        aux_loss = routing.logits_TE.new_zeros(())
    else:
        aux_loss = _load_balancing_loss(routing.probs_TE, routing.expert_TK)
    return aux_loss, z_loss(routing.logits_TE)


def token_choice_stats(routing: Routing, n_experts: int, keep_TK=None, width=None) -> Callable:
    """A deferred `RoutingStats` of a token-major routing (padded to `width`)."""
    return lambda: padded_stats(
        _routing_stats(routing.expert_TK, n_experts, keep_TK, routing.probs_TE), width
    )


def stats_from_counts(
    routed_E: torch.Tensor,
    load_E: torch.Tensor,
    drop_rate: float,
    probs_TE: torch.Tensor | None,
    width: int | None = None,
) -> RoutingStats:
    """`RoutingStats` from per-expert counts, for routers without token-major slots.

    routed_E: what each expert was given; load_E: what it processed; the balance numbers
    (load entropy, cv, dead experts, max/mean) come from routed_E, as in `minimoe.routing_stats`.
    """
    r = routed_E.double()
    total = float(r.sum())
    if probs_TE is not None and probs_TE.shape[0] > 0:
        p = probs_TE.detach().double()
        p = p / p.sum(-1, keepdim=True)
        entropy = float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
    else:
        entropy = float("nan")
    if total == 0:
        load_entropy = cv = max_over_mean = float("nan")
    else:
        q = r / total
        load_entropy = float(-(q * q.clamp_min(1e-30).log()).sum())
        cv = float(r.std(unbiased=False) / r.mean())
        max_over_mean = float(r.max() / r.mean())
    stats = RoutingStats(
        routed_E=routed_E.long(),
        load_E=load_E.long(),
        drop_rate=float(drop_rate),
        entropy=entropy,
        load_entropy=load_entropy,
        cv=cv,
        dead_experts=int((routed_E == 0).sum()),
        max_over_mean=max_over_mean,
    )
    return padded_stats(stats, width)
