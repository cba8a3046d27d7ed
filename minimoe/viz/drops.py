"""How much a capacity limit drops, measured four ways, and its curve over capacity factors.

Every drop policy keeps min(load_e, C) slots of expert e, so the fraction of *slots* dropped is
the same for all of them; the policies differ in *which* slots go, which the other measures
show: first choices lost, gate weight lost, tokens left with no expert at all. Capacities come
from `minimoe.expert_capacity`, drops from `minimoe.assign_slots` (one routing group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from minimoe.capacity import assign_slots, expert_capacity

DROP_METRICS = ("slots", "first_choice", "gate_mass", "tokens")


def drop_metric(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    keep_TK: torch.Tensor,
    metric: str = "slots",
) -> float:
    """How much a capacity limit dropped, by one of four measures.

    Args:
        expert_TK, gate_TK, keep_TK: the routing and which slots survived, (T, K).
        metric: "slots" (fraction of the T*K slots; the same for every drop policy),
            "first_choice" (fraction of first choices dropped), "gate_mass" (fraction of the
            total gate weight dropped) or "tokens" (fraction of tokens that lost every slot).
    """
    if metric not in DROP_METRICS:
        raise ValueError(f"metric={metric!r} is not one of {DROP_METRICS}")
    if keep_TK.numel() == 0:
        return 0.0
    if metric == "slots":
        return float((~keep_TK).float().mean())
    if metric == "first_choice":
        return float((~keep_TK[:, 0]).float().mean())
    if metric == "gate_mass":
        g = gate_TK.detach().double()
        return float((g * ~keep_TK).sum() / g.sum().clamp_min(1e-30))
    return float((~keep_TK.any(dim=1)).float().mean())


def drop_curve(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    n_experts: int,
    capacity_factors: Sequence[float],
    policy: str = "position",
    formula: str = "deepspeed",
    *,
    metric: str = "slots",
    min_capacity: int = 0,
    seed: int = 0,
) -> list[float]:
    """`drop_metric` at each capacity factor, capacities by `minimoe.expert_capacity`, drops by
    `minimoe.assign_slots` (one routing group; "random" seeded by `seed`)."""
    if formula in ("dropless", "switch"):
        raise ValueError(f"formula={formula!r} does not use a capacity factor")
    T, K = expert_TK.shape
    out = []
    for cf in capacity_factors:
        C = expert_capacity(T, n_experts, K, formula, float(cf), min_capacity)
        gen = torch.Generator().manual_seed(seed)
        keep_TK, _ = assign_slots(expert_TK, gate_TK, n_experts, C, policy, generator=gen)
        out.append(drop_metric(expert_TK, gate_TK, keep_TK, metric))
    return out
