"""Residual and pyramid MoE (PR-MoE, DeepSpeed-MoE): a dense MLP plus one routed expert as its correction.

Rajbhandari et al. 2022, "DeepSpeed-MoE" (arXiv 2201.05596), section 4.1:
- Residual MoE: since top-2 beats top-1 mostly by the second expert "correcting" the first, fix
  one expert (a dense MLP every token uses) and route each token to one more expert: the
  compute of top-2, the communication of top-1. The two outputs are mixed as DeepSpeed does it
  (deepspeed 0.19.8, `deepspeed/moe/layer.py`, `MoE.forward` with `use_residual=True`):
  c = softmax(Linear_{D->2}(x)), y = c_0 * expert(x) * g + c_1 * MLP(x), g the top-1 gate.
- Pyramid: the later layers benefit more from experts, so they get more (their PR-MoE uses 32
  experts in the first layers and 64 in the last ones; section 4.1.1). `pyramid_experts` gives
  the experts of each MoE layer: half of E in the first half of the MoE layers, E in the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import Experts, expert_ffn
from minimoe.loop import loop_moe
from minimoe.router import Router
from minimoe.routing import route
from minimoe.validate import check_int
from minimoe.zoo.result import ZooResult, token_choice_losses, token_choice_stats

__all__ = ["ResidualMoELayer", "pyramid_experts"]


def pyramid_experts(n_experts: int, n_moe_layers: int) -> list[int]:
    """Experts per MoE layer: max(1, E // 2) in the first half of the layers, E in the second.

    One MoE layer gets E. PR-MoE's own ratio (32 then 64) is the same factor of two.
    """
    E = check_int("n_experts", n_experts, low=1)
    L = check_int("n_moe_layers", n_moe_layers, low=1)
    return [max(1, E // 2) if i < L // 2 else E for i in range(L)]


class ResidualMoELayer(nn.Module):
    """A Residual MoE layer: dense MLP of hidden size F + top-1 of `n_experts` experts of F.

    Args:
        cfg: the `MoEConfig` (D, F, activation, gating, aux loss; its E unless `n_experts`).
        n_experts: this layer's experts (the pyramid's choice for its depth).
        stats_width: pad the load vectors to this many experts (the model's widest layer).
        experts_fn: the routed experts step.

    Active expert weights per token: the MLP and one expert, 2F wide: those of top-2 of F.
    """

    uses_context = False

    def __init__(
        self,
        cfg: MoEConfig,
        *,
        n_experts: int | None = None,
        stats_width: int | None = None,
        experts_fn=loop_moe,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_experts = (
            cfg.n_experts if n_experts is None else check_int("n_experts", n_experts, low=1)
        )
        self.stats_width = stats_width
        self.experts_fn = experts_fn
        self.router = Router(cfg.d_model, self.n_experts)
        self.experts = Experts(self.n_experts, cfg.d_model, cfg.d_ff, cfg.activation)
        self.mlp = Experts(1, cfg.d_model, cfg.d_ff, cfg.activation)
        self.coefficient = nn.Linear(cfg.d_model, 2)

    def inactive_params(self) -> int:
        per = sum(p.numel() for p in self.experts.parameters()) // self.n_experts
        return (self.n_experts - 1) * per

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        x_TD = x.reshape(-1, cfg.d_model)
        logits_TE, _ = self.router(x_TD)
        gating = "switch" if cfg.gating in ("mixtral", "shazeer") else cfg.gating
        routing = route(logits_TE, 1, gating)
        moe_TD = self.experts_fn(
            x_TD, routing.expert_TK, routing.gate_TK.to(x.dtype), self.experts.params
        )
        mlp_TD = expert_ffn(x_TD, self.mlp.params, 0)
        c_T2 = torch.softmax(self.coefficient(x_TD), dim=-1)
        y_TD = moe_TD * c_T2[:, 0:1] + mlp_TD * c_T2[:, 1:]
        aux, z = token_choice_losses(routing, cfg.aux_loss, self.n_experts)
        stats = token_choice_stats(routing, self.n_experts, width=self.stats_width)
        return y_TD.view(x.shape), ZooResult(aux, z, routing, logits_TE, stats)
