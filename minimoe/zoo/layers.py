"""Every router of the zoo as a layer, by name: the one factory the tiny LM and the collapse lab use.

    layer = make_moe_layer("expert_choice", cfg)           # an nn.Module
    y, result = layer(x)                                   # or layer(x, context=...) if uses_context

Every layer returns (y, result) with result.aux_loss, result.z_loss and result.stats (a
`RoutingStats`), as `minimoe.MoELayer`. Three optional attributes make the rest generic:
- `uses_context` (True): forward takes `context=`, a dict the model makes once per forward pass
  (the tiny LM puts the token ids under "token_ids"; the recurrent router keeps its state there);
- `set_step(step, total_steps)`: a per-step hook the trainers call before each training step
  (top-k warm-up anneals K with it);
- `inactive_params()`: the expert weights a token does not use, for the active-parameter count.

| name                | layer                  | source |
|---------------------|------------------------|--------|
| token_choice        | `minimoe.MoELayer`     | Shazeer et al. 2017; Switch; Mixtral |
| expert_choice       | `ExpertChoiceLayer`    | Zhou et al. 2022, arXiv 2202.09368 |
| expert_choice_causal| `ExpertChoiceLayer(group="position")` | the same paper's limitation, routed per position |
| soft_moe            | `SoftMoELayer`         | Puigcerver et al. 2023, arXiv 2308.00951 |
| hash                | `HashLayer`            | Roller et al. 2021, arXiv 2106.04426 |
| shared_fine_grained | `FineGrainedLayer`     | DeepSeekMoE, arXiv 2401.06066 |
| pr_moe              | `ResidualMoELayer` (pyramid) | DeepSpeed-MoE, arXiv 2201.05596 |
| recurrent           | `RecurrentRouterLayer` | Qiu et al. 2024, arXiv 2408.06793 |
| reroute             | `RerouteLayer`         | capacity overflow moved, not dropped |
| topk_warmup         | `TopKWarmupLayer`      | K annealed from E to the target |
| peer                | `PEERLayer`            | He 2024, arXiv 2407.04153 (product keys, Lample et al. 2019) |
"""

from __future__ import annotations

from torch import nn

from minimoe.config import MoEConfig
from minimoe.layer import MoELayer
from minimoe.loop import loop_moe
from minimoe.validate import check_choice, check_int
from minimoe.zoo.expert_choice import ExpertChoiceLayer
from minimoe.zoo.fine_grained import FineGrainedLayer
from minimoe.zoo.hash import HashLayer
from minimoe.zoo.peer import PEERLayer
from minimoe.zoo.recurrent import RecurrentRouterLayer
from minimoe.zoo.reroute import RerouteLayer
from minimoe.zoo.residual import ResidualMoELayer, pyramid_experts
from minimoe.zoo.soft_moe import SoftMoELayer
from minimoe.zoo.warmup import TopKWarmupLayer

__all__ = ["ROUTERS", "inactive_params", "make_moe_layer"]

ROUTERS = (
    "token_choice",
    "expert_choice",
    "expert_choice_causal",
    "soft_moe",
    "hash",
    "shared_fine_grained",
    "pr_moe",
    "recurrent",
    "reroute",
    "topk_warmup",
    "peer",
)


def make_moe_layer(
    router: str,
    cfg: MoEConfig,
    *,
    layer_index: int = 0,
    n_moe_layers: int = 1,
    shared: dict | None = None,
    experts_fn=loop_moe,
    group_size: int | None = None,
    vocab_size: int | None = None,
    options: dict | None = None,
) -> nn.Module:
    """The MoE layer `router` for one position in a model.

    Args:
        router: one of `ROUTERS`.
        cfg: the layer's `MoEConfig` (D, F, E, K, gating, capacity, aux loss, activation).
        layer_index, n_moe_layers: this layer's rank among the model's MoE layers (the pyramid).
        shared: a dict shared by every layer of one model (the recurrent router's GRU cell).
        experts_fn: the experts implementation of the layers that route token-major.
        group_size: tokens per routing group (Soft MoE's slots are sized for it).
        vocab_size: V, for hash routing.
        options: extra keyword arguments of the layer (e.g. {"granularity": 4}).
    """
    check_choice("router", router, ROUTERS)
    if not isinstance(cfg, MoEConfig):
        raise TypeError(f"cfg must be a MoEConfig, got {type(cfg).__name__}")
    check_int("layer_index", layer_index, low=0)
    check_int("n_moe_layers", n_moe_layers, low=layer_index + 1)
    shared = {} if shared is None else shared
    kw = dict(options or {})
    if router == "token_choice":
        return MoELayer(cfg, experts_fn=experts_fn)
    if router in ("expert_choice", "expert_choice_causal"):
        group = "position" if router == "expert_choice_causal" else "batch"
        return ExpertChoiceLayer(cfg, group=group, **kw)
    if router == "soft_moe":
        return SoftMoELayer(cfg, group_size=group_size, **kw)
    if router == "hash":
        if vocab_size is None:
            raise ValueError("the hash router needs vocab_size (the token ids it hashes)")
        return HashLayer(cfg, vocab_size=vocab_size, seed=cfg.seed, **kw)
    if router == "shared_fine_grained":
        return FineGrainedLayer(cfg, experts_fn=experts_fn, **kw)
    if router == "pr_moe":
        E_l = pyramid_experts(cfg.n_experts, n_moe_layers)[layer_index]
        return ResidualMoELayer(
            cfg, n_experts=E_l, stats_width=cfg.n_experts, experts_fn=experts_fn, **kw
        )
    if router == "recurrent":
        state = kw.pop("state_size", max(1, cfg.d_model // 2))
        if "gru_cell" not in shared:
            shared["gru_cell"] = nn.GRUCell(state, state)
        return RecurrentRouterLayer(cfg, cell=shared["gru_cell"], experts_fn=experts_fn, **kw)
    if router == "reroute":
        if cfg.capacity_formula == "dropless":
            cfg = cfg.replace(capacity_formula="megatron", capacity_factor=1.0)
        return RerouteLayer(cfg, experts_fn=experts_fn, **kw)
    if router == "peer":
        return PEERLayer(cfg, **kw)
    return TopKWarmupLayer(cfg, experts_fn=experts_fn, **kw)


def inactive_params(layer: nn.Module) -> int:
    """Expert weights a token does not use in `layer`: its own count, else (E - K) experts'."""
    if hasattr(layer, "inactive_params"):
        return int(layer.inactive_params())
    E, K = layer.cfg.n_experts, layer.cfg.top_k
    return (E - K) * (sum(p.numel() for p in layer.experts.parameters()) // E)
