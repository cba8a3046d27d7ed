"""minimoe: a small, readable Mixture-of-Experts library, and the course built on it.

The public API (frozen; later chapters import it):

    from minimoe import MoEConfig, MoELayer, reference_moe, loop_moe

    cfg = MoEConfig(d_model=64, d_ff=128, n_experts=8, top_k=2)
    layer = MoELayer(cfg, experts_fn=loop_moe)
    y, result = layer(x)              # result.aux_loss, result.z_loss, result.stats, ...
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
