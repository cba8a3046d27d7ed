"""The configuration of one MoE layer: a frozen, validated dataclass.

Every convention that real systems disagree on is a named field here, so a layer's behaviour is
readable from its config alone (no flags at a distance). The names of the conventions, and the
systems they come from, are documented in `minimoe.routing` and `minimoe.capacity`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from minimoe.validate import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_real,
)

Activation = Literal["gelu", "relu", "swiglu"]
Gating = Literal["switch", "mixtral", "shazeer", "deepseek_v3"]
Noise = Literal["none", "shazeer", "jitter", "gumbel", "gumbel_second"]
JitterScope = Literal["router", "router_and_experts"]
SecondExpertPolicy = Literal["all", "random"]
CapacityFormula = Literal["dropless", "deepspeed", "megatron", "tutel", "switch"]
DropPolicy = Literal["position", "k_major", "probs", "random", "batch_priority"]
AuxLoss = Literal["switch", "mixtral", "none"]

GATINGS = ("switch", "mixtral", "shazeer", "deepseek_v3")
NOISES = ("none", "shazeer", "jitter", "gumbel", "gumbel_second")
JITTER_SCOPES = ("router", "router_and_experts")
SECOND_EXPERT_POLICIES = ("all", "random")
CAPACITY_FORMULAS = ("dropless", "deepspeed", "megatron", "tutel", "switch")
DROP_POLICIES = ("position", "k_major", "probs", "random", "batch_priority")
ACTIVATIONS = ("gelu", "relu", "swiglu")
AUX_LOSSES = ("switch", "mixtral", "none")


def check_routing_args(
    n_experts: int,
    top_k,
    gating,
    *,
    n_groups=1,
    topk_groups=1,
    routed_scaling_factor=1.0,
    norm_topk_prob=True,
) -> None:
    """The checks `route` and `MoEConfig` share: K, the gating and DeepSeek-V3's arguments."""
    check_int("top_k", top_k)
    if not 1 <= top_k <= n_experts:
        raise ValueError(
            f"top_k must be in [1, n_experts={n_experts}], got {top_k} (a token picks K distinct "
            "experts)"
        )
    check_choice("gating", gating, GATINGS)
    check_int("n_groups", n_groups, low=1, high=n_experts)
    if n_experts % n_groups:
        raise ValueError(f"n_groups={n_groups} must divide n_experts={n_experts}")
    check_int("topk_groups", topk_groups, low=1, high=n_groups)
    if n_groups > 1 and gating != "deepseek_v3":
        raise ValueError("group-limited top-k (n_groups > 1) is the 'deepseek_v3' gating's")
    left = topk_groups * (n_experts // n_groups)
    if top_k > left:
        raise ValueError(
            f"top_k exceeds the {left} experts left in the topk_groups={topk_groups} kept "
            f"groups of {n_experts // n_groups} (top_k={top_k})"
        )
    check_real("routed_scaling_factor", routed_scaling_factor, low=0.0, low_open=True)
    check_bool("norm_topk_prob", norm_topk_prob)
    if not norm_topk_prob and gating != "deepseek_v3":
        raise ValueError(
            "norm_topk_prob=False is the 'deepseek_v3' gating's; for softmax gates the choice "
            "is the gating's name: 'switch' (not renormalised) or 'mixtral' (renormalised)"
        )


@dataclass(frozen=True)
class MoEConfig:
    """Everything that defines one MoE layer.

    Args:
        d_model: D, the model (token) dimension.
        d_ff: F, each expert's hidden dimension.
        n_experts: E, the number of routed experts.
        top_k: K, experts per token (1 <= K <= E).
        activation: "gelu" (w2 · gelu(w1 x)), "relu" (w2 · relu(w1 x), HF SwitchTransformers'
            default) or "swiglu" (w2 · (silu(w1 x) * w3 x), as Mixtral).
        gating: how gate weights are made from router logits (see `minimoe.routing`).
        n_groups, topk_groups: group-limited top-k (DeepSeek-V3); n_groups=1 means no groups.
        routed_scaling_factor: multiplies the weights of the "deepseek_v3" gating (> 0).
        norm_topk_prob: "deepseek_v3" only: renormalise the K selected sigmoid scores (True,
            DeepSeek-V3's release) or use them as they are, times the scale (False; HF
            `norm_topk_prob=False`). The softmax gatings name this choice: "switch" is False,
            "mixtral" True.
        noise: router noise, applied only in training mode (see `minimoe.router`).
        jitter_eps: the ε of multiplicative jitter, x * U(1-ε, 1+ε).
        jitter_scope: who sees the jittered tokens: "router" (the router input only, as the
            Switch paper) or "router_and_experts" (HF Mixtral's `router_jitter_noise`).
        second_expert_policy: "all", or "random": in training, keep each token's second expert
            with probability min(1, 2 p2), p2 its softmax probability (GShard, arXiv 2006.16668,
            Algorithm 1; HF NLLB-MoE `second_expert_policy="random"`). Needs top_k = 2.
        capacity_formula: how the expert capacity C is computed ("dropless" = no capacity).
        capacity_factor: cf > 0, used by every formula except "dropless" and "switch".
        min_capacity: lower bound on C (DeepSpeed uses 8; 0 means none).
        expert_capacity: the fixed per-group C of the "switch" formula.
        group_size: tokens per routing group (Switch routes each sequence on its own); None = all.
        drop_policy: which slots survive when an expert overflows (see `minimoe.capacity`).
        renormalize_after_drop: rescale a token's surviving gates to sum as before (DeepSpeed).
        aux_loss: which load-balancing loss the layer returns (see `minimoe.losses`).
        aux_loss_per_group: compute the "switch" loss on each routing group (group_size tokens,
            e.g. one sequence) and average over groups, as HF SwitchTransformers does per
            sequence; False pools all tokens.
        seed: seeds the "random" drop policy, so drops are reproducible.
        check_finite: raise if the router logits hold NaN or inf (costs a device sync).
    """

    d_model: int
    d_ff: int
    n_experts: int
    top_k: int = 2
    activation: Activation = "swiglu"
    gating: Gating = "mixtral"
    n_groups: int = 1
    topk_groups: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    noise: Noise = "none"
    jitter_eps: float = 1e-2
    jitter_scope: JitterScope = "router"
    second_expert_policy: SecondExpertPolicy = "all"
    capacity_formula: CapacityFormula = "dropless"
    capacity_factor: float = 1.25
    min_capacity: int = 0
    expert_capacity: int | None = None
    group_size: int | None = None
    drop_policy: DropPolicy = "position"
    renormalize_after_drop: bool = False
    aux_loss: AuxLoss = "switch"
    aux_loss_per_group: bool = False
    seed: int = 0
    check_finite: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "d_ff", "n_experts"):
            check_int(name, getattr(self, name), low=1)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("gating", self.gating, GATINGS)
        check_choice("noise", self.noise, NOISES)
        check_choice("jitter_scope", self.jitter_scope, JITTER_SCOPES)
        check_choice("second_expert_policy", self.second_expert_policy, SECOND_EXPERT_POLICIES)
        check_choice("capacity_formula", self.capacity_formula, CAPACITY_FORMULAS)
        check_choice("drop_policy", self.drop_policy, DROP_POLICIES)
        check_choice("aux_loss", self.aux_loss, AUX_LOSSES)
        check_real("capacity_factor", self.capacity_factor, low=0.0, low_open=True)
        check_int("min_capacity", self.min_capacity, low=0)
        check_optional_int("expert_capacity", self.expert_capacity, low=1)
        if self.capacity_formula == "switch" and self.expert_capacity is None:
            raise ValueError("capacity_formula='switch' needs expert_capacity >= 1, got None")
        check_optional_int("group_size", self.group_size, low=1)
        check_routing_args(
            self.n_experts,
            self.top_k,
            self.gating,
            n_groups=self.n_groups,
            topk_groups=self.topk_groups,
            routed_scaling_factor=self.routed_scaling_factor,
            norm_topk_prob=self.norm_topk_prob,
        )
        check_real("jitter_eps", self.jitter_eps, low=0.0, high=1.0, high_open=True)
        if self.second_expert_policy == "random" and self.top_k != 2:
            raise ValueError(f"second_expert_policy='random' needs top_k=2, got {self.top_k}")
        for name in ("renormalize_after_drop", "aux_loss_per_group", "check_finite"):
            check_bool(name, getattr(self, name))
        check_int("seed", self.seed)
        if self.aux_loss_per_group and (self.group_size is None or self.aux_loss != "switch"):
            raise ValueError(
                "aux_loss_per_group=True averages the 'switch' loss over groups: it needs "
                f"aux_loss='switch' and a group_size, got aux_loss={self.aux_loss!r}, "
                f"group_size={self.group_size}"
            )

    def replace(self, **changes) -> MoEConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
