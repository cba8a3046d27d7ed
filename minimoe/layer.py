"""The MoE layer: router -> gating convention -> capacity + drops -> experts -> losses + statistics.

    y, result = MoELayer(cfg, experts_fn=loop_moe)(x)

The experts implementation is an explicit argument (any function with the signature of
`minimoe.reference_moe`); nothing is switched by a flag at a distance. The losses and statistics
come back in `result`; the caller decides what to add to its training loss.

The layer's "probs" drop policy ranks slots by their final gate weights (as Megatron-LM does);
DeepSpeed's topk ranks by the raw softmax probability instead: call `assign_slots` with
`routing.probs_TE.gather(1, routing.expert_TK)` for that (tests/parity/test_parity_deepspeed.py).

Checks and device syncs: the layer's inputs are checked by the config and here; the routing it
makes is valid by construction, so only the experts step checks the expert ids' range (one
device sync per forward pass, `minimoe.validate.check_expert_ids`). The routing statistics need
several host syncs (counts and floats read back), so `result.stats` computes them only when it is
first read; a training step that never looks at them never waits for them.

Two sets of gates: `result.routing.gate_TK` is what the router chose; `result.gate_TK` is what
the experts used, after the capacity drops (a dropped slot's gate is 0, and the survivors are
rescaled when `renormalize_after_drop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from minimoe.capacity import (
    _assign_slots,
    expert_capacity,
    random_second_expert,
    renormalize_survivors,
)
from minimoe.config import MoEConfig
from minimoe.experts import Experts, ExpertsFn
from minimoe.loop import loop_moe
from minimoe.losses import _load_balancing_loss, _mixtral_load_balancing_loss, z_loss
from minimoe.metrics import RoutingStats, _routing_stats
from minimoe.router import Router
from minimoe.routing import Routing, route


@dataclass
class MoEResult:
    """What one forward pass of `MoELayer` returns beside its output.

    Attributes:
        aux_loss: the config's load-balancing loss (0 if aux_loss="none"), differentiable.
        z_loss: the router z-loss, differentiable.
        routing: the `Routing` as the router chose it (experts, gates before drops, probs, logits).
        keep_TK: which slots survived the capacity limit.
        capacity: C per expert per group (None when dropless).
        gate_TK: the gates the experts used: after drops (0 for a dropped slot), renormalised
            when the config says so.
        n_experts: E, for the statistics.
        stats: `RoutingStats` of this pass, computed (with its host syncs) when first read.
    """

    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    routing: Routing
    keep_TK: torch.Tensor
    capacity: int | None
    gate_TK: torch.Tensor
    n_experts: int = field(repr=False)

    @cached_property
    def stats(self) -> RoutingStats:
        return _routing_stats(
            self.routing.expert_TK, self.n_experts, self.keep_TK, self.routing.probs_TE
        )


class MoELayer(nn.Module):
    """A sparse MoE feed-forward layer.

    Args:
        cfg: the `MoEConfig`.
        experts_fn: the experts implementation (default: the loop over experts).
    """

    def __init__(self, cfg: MoEConfig, experts_fn: ExpertsFn = loop_moe) -> None:
        super().__init__()
        if not isinstance(cfg, MoEConfig):
            raise TypeError(f"cfg must be a MoEConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.experts_fn = experts_fn
        self.router = Router(
            cfg.d_model,
            cfg.n_experts,
            noise=cfg.noise,
            jitter_eps=cfg.jitter_eps,
            selection_bias=cfg.gating == "deepseek_v3",
            jitter_scope=cfg.jitter_scope,
        )
        self.experts = Experts(cfg.n_experts, cfg.d_model, cfg.d_ff, cfg.activation)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEResult]:
        """x: (..., D), e.g. (B, S, D) or (T, D). Returns (y with x's shape, MoEResult)."""
        cfg = self.cfg
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        if x.dtype != self.experts.w1_EFD.dtype:
            raise TypeError(f"x is {x.dtype} but the layer is {self.experts.w1_EFD.dtype}")
        x_TD = x.reshape(-1, cfg.d_model)
        T = x_TD.shape[0]
        if cfg.group_size is not None and T % cfg.group_size:
            raise ValueError(
                f"T={T} tokens do not split into groups of group_size={cfg.group_size}"
            )
        if self.training and cfg.noise == "jitter" and cfg.jitter_scope == "router_and_experts":
            x_TD = self.router.jitter(x_TD)  # HF Mixtral: the experts see the jittered tokens
        logits_TE, select_noise_TE = self.router(x_TD)
        if cfg.check_finite and not torch.isfinite(logits_TE).all():
            raise FloatingPointError(
                "router logits contain NaN or inf: check the input and the router weights"
            )
        routing = route(
            logits_TE,
            cfg.top_k,
            cfg.gating,
            select_noise_TE=select_noise_TE,
            bias_E=self.router.bias_E,
            n_groups=cfg.n_groups,
            topk_groups=cfg.topk_groups,
            routed_scaling_factor=cfg.routed_scaling_factor,
            norm_topk_prob=cfg.norm_topk_prob,
            clean_first_choice=select_noise_TE is not None and cfg.noise == "gumbel_second",
        )
        group = cfg.group_size if cfg.group_size is not None else T
        capacity = expert_capacity(
            group,
            cfg.n_experts,
            cfg.top_k,
            cfg.capacity_formula,
            cfg.capacity_factor,
            cfg.min_capacity,
            cfg.expert_capacity,
        )
        # the ids come from top-k over E columns: in range, so the unchecked form (no device sync)
        keep_TK, _ = _assign_slots(
            routing.expert_TK,
            routing.gate_TK,
            cfg.n_experts,
            capacity,
            cfg.drop_policy,
            cfg.group_size,
            self.generator,
        )
        if self.training and cfg.second_expert_policy == "random":
            prob2_T = routing.probs_TE.gather(1, routing.expert_TK[:, 1:2])[:, 0]
            keep2_T = random_second_expert(prob2_T, self.generator)
            keep_TK = keep_TK & torch.stack([torch.ones_like(keep2_T), keep2_T], dim=1)
        gate_TK = routing.gate_TK * keep_TK
        if cfg.renormalize_after_drop:
            gate_TK = renormalize_survivors(routing.gate_TK, keep_TK)
        y_TD = self.experts_fn(x_TD, routing.expert_TK, gate_TK, self.experts.params, keep_TK)
        # DeepSeek-V3's sigmoid scores do not sum to 1; its balance loss normalises them per token
        # first (arXiv 2412.19437, eq. 19), so the loss is 1 at perfect balance here too.
        probs_TE = routing.probs_TE
        if cfg.gating == "deepseek_v3":
            probs_TE = probs_TE / probs_TE.sum(-1, keepdim=True).clamp_min(1e-20)
        if cfg.aux_loss == "switch":
            per_group = cfg.group_size if cfg.aux_loss_per_group else None
            aux = _load_balancing_loss(probs_TE, routing.expert_TK, group_size=per_group)
        elif cfg.aux_loss == "mixtral":
            aux = _mixtral_load_balancing_loss(probs_TE, routing.expert_TK)
        else:
            aux = logits_TE.new_zeros(())
        result = MoEResult(
            aux, z_loss(logits_TE), routing, keep_TK, capacity, gate_TK, cfg.n_experts
        )
        return y_TD.view(x.shape), result
