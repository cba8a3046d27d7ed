"""minimoe: a small, readable Mixture-of-Experts library, and the course built on it.

The public API (frozen; later chapters import it):

    from minimoe import MoEConfig, MoELayer, reference_moe, loop_moe

    cfg = MoEConfig(d_model=64, d_ff=128, n_experts=8, top_k=2)
    layer = MoELayer(cfg, experts_fn=loop_moe)
    y, result = layer(x)              # result.aux_loss, result.z_loss, result.stats, ...

The experts implementation is an argument; `minimoe.impls.IMPLEMENTATIONS` names them all
(reference, loop, einsum, padded_bmm, grouped_mm, triton).

Shape letters. A tensor's name ends in its shape, one capital per dimension in order (`x_TD` is
[T, D], `w1_EFD` is [E, F, D]); einsum strings use the same letters. Each means one thing:

    B  batch (sequences per batch)                 S  sequence length (tokens per sequence)
    T  tokens in the routing group, T = B * S      D  model dimension (d_model)
    F  expert hidden dimension (d_ff)              E  experts
    K  experts per token (top-k)                   N  routed slots, N = T * K
    R  kept slots, R <= N (rows of a gathered      C  expert capacity (slots per expert per
       or sorted buffer; rows of a plain FFN)         routing group)
    L  layers                                      V  vocabulary size
    H  history: recorded training steps

Where one function serves several weights, I and O are a weight's input and output features
(`w_EOI`). Local letters are defined where they are used: G, the expert groups of group-limited
routing; P, the padded rows of the Triton index lists. docs/glossary.md has the same table with
examples, and the words (slot, drop, capacity, ...).
"""

from minimoe.accounting import MoECost, moe_cost
from minimoe.capacity import (
    assign_slots,
    expert_capacity,
    random_second_expert,
    renormalize_survivors,
)
from minimoe.config import MoEConfig
from minimoe.einsum import dispatch_combine_tensors, einsum_moe
from minimoe.experts import ExpertParams, Experts, ExpertsFn, expert_ffn, ffn
from minimoe.layer import MoELayer, MoEResult
from minimoe.loop import loop_moe
from minimoe.losses import load_balancing_loss, mixtral_load_balancing_loss, z_loss
from minimoe.metrics import RoutingStats, routing_stats
from minimoe.params import count_decoder_params, count_moe_params
from minimoe.reference import reference_moe
from minimoe.router import Router
from minimoe.routing import Routing, route
from minimoe.sorted import grouped_mm_moe, grouped_mm_path, padded_bmm_moe, sort_slots

__version__ = "0.1.0"

__all__ = [
    "ExpertParams",
    "Experts",
    "ExpertsFn",
    "MoEConfig",
    "MoECost",
    "MoELayer",
    "MoEResult",
    "Router",
    "Routing",
    "RoutingStats",
    "assign_slots",
    "count_decoder_params",
    "count_moe_params",
    "dispatch_combine_tensors",
    "einsum_moe",
    "expert_capacity",
    "expert_ffn",
    "ffn",
    "grouped_mm_moe",
    "grouped_mm_path",
    "load_balancing_loss",
    "loop_moe",
    "mixtral_load_balancing_loss",
    "moe_cost",
    "padded_bmm_moe",
    "random_second_expert",
    "reference_moe",
    "renormalize_survivors",
    "route",
    "routing_stats",
    "sort_slots",
    "z_loss",
]
