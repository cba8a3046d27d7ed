"""Shared and fine-grained experts (DeepSeekMoE): always-on shared experts plus many small routed ones.

Dai et al. 2024, "DeepSeekMoE" (arXiv 2401.06066), section 3, eqs. 9-11:

    h[t] = sum_{i=1}^{K_s} FFN_i(u[t]) + sum_{i=K_s+1}^{mN} g[i, t] FFN_i(u[t]) (+ u[t], the residual)

Fine-grained segmentation (section 3.1): each of N experts of hidden size F is split into m
experts of hidden size F/m, and each token picks m*K of the mN, so the active FFN weights stay
those of K full experts while the combinations grow from C(N, K) to C(mN, mK). Shared isolation
(section 3.2): K_s experts take every token (gate 1) and hold the common knowledge; to keep the
compute constant the routed top-k drops by K_s. The residual is the caller's.
"""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams, expert_ffn
from minimoe.loop import loop_moe
from minimoe.zoo._validate import check_x_and_params

__all__ = ["shared_routed_forward"]


def shared_routed_forward(
    x_TD: torch.Tensor,
    shared: ExpertParams,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    routed: ExpertParams,
    *,
    keep_TK: torch.Tensor | None = None,
    experts_fn=loop_moe,
) -> torch.Tensor:
    """sum_s FFN_s(x) over every shared expert (gate 1) + the routed experts' weighted sum.

    Args:
        x_TD: tokens.
        shared: the K_s shared experts (any number, 0 included; their own hidden size).
        expert_TK, gate_TK: the routing over the routed experts (as `minimoe.route` makes it).
        routed: the routed experts.
        keep_TK: surviving routed slots (None: all), as `minimoe.reference_moe`.
        experts_fn: the routed experts step (default the loop over experts).

    Returns:
        y_TD in x's dtype.
    """
    check_x_and_params(x_TD, shared, "shared")
    check_x_and_params(x_TD, routed, "routed")
    y_TD = experts_fn(x_TD, expert_TK, gate_TK, routed, keep_TK)
    for s in range(shared.n_experts):
        y_TD = y_TD + expert_ffn(x_TD, shared, s)
    if shared.n_experts == 0:  # keep the shared weights in the graph (zero gradients)
        y_TD = y_TD + sum(w[:0].sum() for w in shared if isinstance(w, torch.Tensor))
    return y_TD
