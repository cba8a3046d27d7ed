"""The configuration of one MoE layer: a frozen, validated dataclass.

Every convention that real systems disagree on is a named field here, so a layer's behaviour is
readable from its config alone (no flags at a distance). The names of the conventions, and the
systems they come from, are documented in `minimoe.routing` and `minimoe.capacity`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Activation = Literal["gelu", "swiglu"]
Gating = Literal["switch", "mixtral", "shazeer", "deepseek_v3"]
Noise = Literal["none", "shazeer", "jitter", "gumbel"]
CapacityFormula = Literal["dropless", "deepspeed", "megatron", "tutel", "switch"]
DropPolicy = Literal["position", "k_major", "probs", "random", "batch_priority"]
AuxLoss = Literal["switch", "mixtral", "none"]

GATINGS = ("switch", "mixtral", "shazeer", "deepseek_v3")
NOISES = ("none", "shazeer", "jitter", "gumbel")
CAPACITY_FORMULAS = ("dropless", "deepspeed", "megatron", "tutel", "switch")
DROP_POLICIES = ("position", "k_major", "probs", "random", "batch_priority")
ACTIVATIONS = ("gelu", "swiglu")
AUX_LOSSES = ("switch", "mixtral", "none")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


@dataclass(frozen=True)
class MoEConfig:
    """Everything that defines one MoE layer.

    Args:
        d_model: D, the model (token) dimension.
        d_ff: F, each expert's hidden dimension.
        n_experts: E, the number of routed experts.
        top_k: K, experts per token (1 <= K <= E).
        activation: "gelu" (w2 · gelu(w1 x)) or "swiglu" (w2 · (silu(w1 x) * w3 x), as Mixtral).
        gating: how gate weights are made from router logits (see `minimoe.routing`).
        n_groups, topk_groups: group-limited top-k (DeepSeek-V3); n_groups=1 means no groups.
        routed_scaling_factor: multiplies the weights of the "deepseek_v3" gating.
        noise: router noise, applied only in training mode (see `minimoe.noise`).
        jitter_eps: the ε of multiplicative jitter, x * U(1-ε, 1+ε).
        capacity_formula: how the expert capacity C is computed ("dropless" = no capacity).
        capacity_factor: cf > 0, used by every formula except "dropless" and "switch".
        min_capacity: lower bound on C (DeepSpeed uses 8; 0 means none).
        expert_capacity: the fixed per-group C of the "switch" formula.
        group_size: tokens per routing group (Switch routes each sequence on its own); None = all.
        drop_policy: which slots survive when an expert overflows (see `minimoe.capacity`).
        renormalize_after_drop: rescale a token's surviving gates to sum as before (DeepSpeed).
        aux_loss: which load-balancing loss the layer returns (see `minimoe.losses`).
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
    noise: Noise = "none"
    jitter_eps: float = 1e-2
    capacity_formula: CapacityFormula = "dropless"
    capacity_factor: float = 1.25
    min_capacity: int = 0
    expert_capacity: int | None = None
    group_size: int | None = None
    drop_policy: DropPolicy = "position"
    renormalize_after_drop: bool = False
    aux_loss: AuxLoss = "switch"
    seed: int = 0
    check_finite: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "d_ff", "n_experts", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.top_k > self.n_experts:
            raise ValueError(
                f"top_k={self.top_k} > n_experts={self.n_experts}: a token cannot pick more "
                "distinct experts than there are"
            )
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("gating", self.gating, GATINGS)
        _choice("noise", self.noise, NOISES)
        _choice("capacity_formula", self.capacity_formula, CAPACITY_FORMULAS)
        _choice("drop_policy", self.drop_policy, DROP_POLICIES)
        _choice("aux_loss", self.aux_loss, AUX_LOSSES)
        if not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0, got {self.capacity_factor}")
        if self.min_capacity < 0:
            raise ValueError(f"min_capacity must be >= 0, got {self.min_capacity}")
        if self.capacity_formula == "switch" and (
            self.expert_capacity is None or self.expert_capacity < 1
        ):
            raise ValueError("capacity_formula='switch' needs expert_capacity >= 1")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 or None, got {self.group_size}")
        if self.n_groups < 1 or self.n_experts % self.n_groups:
            raise ValueError(
                f"n_groups={self.n_groups} must be >= 1 and divide n_experts={self.n_experts}"
            )
        if not 1 <= self.topk_groups <= self.n_groups:
            raise ValueError(f"topk_groups={self.topk_groups} must be in [1, n_groups]")
        if self.n_groups > 1 and self.gating != "deepseek_v3":
            raise ValueError("group-limited top-k (n_groups > 1) is the 'deepseek_v3' gating's")
        if self.n_groups > 1 and self.top_k > self.topk_groups * (self.n_experts // self.n_groups):
            raise ValueError("top_k exceeds the experts left in the topk_groups kept groups")
        if self.jitter_eps < 0 or self.jitter_eps >= 1:
            raise ValueError(f"jitter_eps must be in [0, 1), got {self.jitter_eps}")

    def replace(self, **changes) -> MoEConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
