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
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import ExpertParams, Experts, expert_ffn
from minimoe.loop import loop_moe
from minimoe.router import Router
from minimoe.routing import route
from minimoe.validate import check_int
from minimoe.zoo._validate import check_x_and_params
from minimoe.zoo.result import ZooResult, token_choice_losses, token_choice_stats

__all__ = ["FineGrainedLayer", "shared_routed_forward"]


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


class FineGrainedLayer(nn.Module):
    """DeepSeekMoE's layer: m-way segmented routed experts plus always-on shared experts.

    From a plain layer of E experts of hidden size F with top-K (the `cfg`), it keeps both the
    total and the active expert weights (DeepSeekMoE, arXiv 2401.06066, sections 3.1-3.2):
    m*E experts of hidden size F/m, of which `n_shared` are shared (every token) and the other
    m*E - n_shared are routed, top (m*K - n_shared). Active: m*K experts of F/m = K*F;
    total: m*E of F/m = E*F, as the plain layer (`param_counts` shows it).

    Args:
        cfg: the plain layer's `MoEConfig` (D, F, E, K, gating, aux loss, activation).
        granularity: m (F must be a multiple).
        n_shared: shared experts (0 <= n_shared < m*K).
        experts_fn: the routed experts step.

    Statistics and losses: those of the routed experts' token-choice routing (dropless).
    """

    uses_context = False

    def __init__(
        self, cfg: MoEConfig, *, granularity: int = 2, n_shared: int = 1, experts_fn=loop_moe
    ) -> None:
        super().__init__()
        m = check_int("granularity", granularity, low=1)
        if cfg.d_ff % m:
            raise ValueError(f"d_ff={cfg.d_ff} must be a multiple of granularity={m}")
        self.n_shared = check_int("n_shared", n_shared, low=0, high=m * cfg.top_k - 1)
        self.cfg = cfg
        self.granularity = m
        self.n_routed = m * cfg.n_experts - self.n_shared
        self.top_k = m * cfg.top_k - self.n_shared
        self.d_ff = cfg.d_ff // m
        self.experts_fn = experts_fn
        self.router = Router(cfg.d_model, self.n_routed)
        self.experts = Experts(self.n_routed, cfg.d_model, self.d_ff, cfg.activation)
        self.shared = Experts(max(self.n_shared, 1), cfg.d_model, self.d_ff, cfg.activation)
        if self.n_shared == 0:  # an empty stack of shared experts keeps one code path
            for name in ("w1_EFD", "w2_EDF", "w3_EFD"):
                w = getattr(self.shared, name)
                if w is not None:
                    setattr(self.shared, name, nn.Parameter(w.data[:0]))

    def param_counts(self) -> dict:
        """Expert weights: total and active per token (shared + routed), and the plain layer's."""
        per = sum(p.numel() for p in self.experts.parameters()) // self.n_routed
        cfg = self.cfg
        plain = per * self.granularity
        return {
            "total": per * (self.n_routed + self.n_shared),
            "active": per * (self.top_k + self.n_shared),
            "plain_total": plain * cfg.n_experts,
            "plain_active": plain * cfg.top_k,
        }

    def inactive_params(self) -> int:
        per = sum(p.numel() for p in self.experts.parameters()) // self.n_routed
        return (self.n_routed - self.top_k) * per

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        x_TD = x.reshape(-1, cfg.d_model)
        logits_TE, _ = self.router(x_TD)
        routing = route(logits_TE, self.top_k, cfg.gating)
        y_TD = shared_routed_forward(
            x_TD,
            self.shared.params,
            routing.expert_TK,
            routing.gate_TK.to(x.dtype),
            self.experts.params,
            experts_fn=self.experts_fn,
        )
        aux, z = token_choice_losses(routing, cfg.aux_loss, self.n_routed)
        stats = token_choice_stats(routing, self.n_routed)
        return y_TD.view(x.shape), ZooResult(aux, z, routing, logits_TE, stats)
