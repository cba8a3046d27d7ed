"""The routing zoo: routers beyond token-choice top-k, each from its paper, checked against a loop.

Functions (the routing and experts steps, float32 or float64, T = 0 allowed):

    expert_choice_capacity, expert_choice, expert_choice_moe   Zhou et al. 2022 (arXiv 2202.09368)
    soft_moe_weights, soft_moe                                 Puigcerver et al. 2023 (2308.00951)
    hash_table, hash_route                                     Roller et al. 2021 (2106.04426)
    shared_routed_forward                                      DeepSeekMoE (2401.06066), eqs. 9-11
    recurrent_router_step                                      Qiu et al. 2024 (2408.06793)
    grid_shape, product_key_topk                               He 2024 (2407.04153), PEER
    measure_causality                                          the future leak, measured

Local shape letter: Z, the recurrent router's state size. C in expert choice is the tokens each
expert takes; in Soft MoE the slots per expert (the rows an expert processes, as the glossary's C).

Layers (each returns (y, ZooResult) like `minimoe.MoELayer`; `make_moe_layer(name, cfg)` builds
any of `ROUTERS`, which is how `TinyLM` and the collapse lab get them): ExpertChoiceLayer,
SoftMoELayer, HashLayer, FineGrainedLayer, ResidualMoELayer (with `pyramid_experts`),
RecurrentRouterLayer, RerouteLayer (`reroute_slots`), TopKWarmupLayer (`warmup_k`), PEERLayer. The arena,
`python -m minimoe zoo`, is `minimoe.zoo.arena` and `minimoe.zoo.cli`.
"""

from minimoe.zoo.causality import CausalityReport, measure_causality
from minimoe.zoo.expert_choice import (
    ExpertChoiceLayer,
    expert_choice,
    expert_choice_capacity,
    expert_choice_moe,
)
from minimoe.zoo.fine_grained import FineGrainedLayer, shared_routed_forward
from minimoe.zoo.hash import HashLayer, hash_route, hash_table
from minimoe.zoo.layers import ROUTERS, make_moe_layer
from minimoe.zoo.peer import PEERLayer, grid_shape, product_key_topk
from minimoe.zoo.recurrent import RecurrentRouterLayer, recurrent_router_step
from minimoe.zoo.reroute import RerouteLayer, reroute_slots
from minimoe.zoo.residual import ResidualMoELayer, pyramid_experts
from minimoe.zoo.result import ZooResult
from minimoe.zoo.soft_moe import SoftMoELayer, soft_moe, soft_moe_weights
from minimoe.zoo.warmup import TopKWarmupLayer, warmup_k

__all__ = [
    "ROUTERS",
    "CausalityReport",
    "ExpertChoiceLayer",
    "FineGrainedLayer",
    "HashLayer",
    "PEERLayer",
    "RecurrentRouterLayer",
    "RerouteLayer",
    "ResidualMoELayer",
    "SoftMoELayer",
    "TopKWarmupLayer",
    "ZooResult",
    "make_moe_layer",
    "product_key_topk",
    "pyramid_experts",
    "reroute_slots",
    "warmup_k",
    "expert_choice",
    "expert_choice_capacity",
    "expert_choice_moe",
    "grid_shape",
    "hash_route",
    "hash_table",
    "measure_causality",
    "recurrent_router_step",
    "shared_routed_forward",
    "soft_moe",
    "soft_moe_weights",
]
