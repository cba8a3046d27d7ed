"""Figures of routing, capacity and load: static (matplotlib) and interactive (ipywidgets + plotly).

Static, each returns its matplotlib Axes and takes `ax=None`:

    from minimoe.viz.static import plot_routing_heatmap, plot_expert_load
    plot_routing_heatmap(routing.probs_TE, routing.expert_TK)
    plot_expert_load(routing.expert_TK, n_experts, keep_TK=keep_TK, capacity=C)

also `plot_drop_rate_vs_capacity`, `plot_load_over_steps` and `plot_drop_policies` (which slots
each drop policy keeps). Interactive, each one call
returning a widget whose `.controls` can be set from Python and whose `.figures` update in place:

    from minimoe.viz import routing_explorer, capacity_explorer, token_colouring
    routing_explorer()          # E, K, gating, noise, temperature, input batch
    capacity_explorer()         # capacity factor, formula, drop policy, renormalise, batch
    token_colouring(tokens, expert_T, n_experts)   # text coloured by expert (HTML)
    collapse_explorer()         # the collapse lab: remedy and strength, load over training
    params_explorer()           # total vs active parameters of published MoE configurations
    padding_explorer()          # skew and capacity against each implementation's padding and drops
    load_animation(load_SE)     # per-expert load over training steps, animated

and `plot_moe_block()` (`minimoe.viz.diagrams`), the picture of a dense block against an MoE one.

Every number shown is computed by the library (`minimoe.route`, `minimoe.Router`,
`minimoe.assign_slots`, `minimoe.expert_capacity`, `minimoe.routing_stats`); these modules only
draw. Experts have one colour everywhere (`expert_colour`: Okabe-Ito, then Paul Tol's muted
scheme). How fast the explorers respond: `python -m minimoe.bench.widgets`.
"""

from minimoe.viz._widgets import expert_colour, expert_colours, text_colour
from minimoe.viz.batches import routing_batch, token_batch
from minimoe.viz.capacity_explorer import CapacityExplorer, capacity_explorer
from minimoe.viz.diagrams import plot_moe_block
from minimoe.viz.params_explorer import ParamsExplorer, params_explorer
from minimoe.viz.routing_explorer import RoutingExplorer, routing_explorer
from minimoe.viz.slots import plot_drop_policies
from minimoe.viz.static import (
    plot_drop_rate_vs_capacity,
    plot_expert_load,
    plot_load_over_steps,
    plot_routing_heatmap,
)
from minimoe.viz.tokens import token_colouring, token_html
from minimoe.viz.training import CollapseExplorer, collapse_explorer, load_animation
from minimoe.viz.vectorised import PaddingExplorer, padding_explorer

__all__ = [
    "CapacityExplorer",
    "CollapseExplorer",
    "PaddingExplorer",
    "ParamsExplorer",
    "RoutingExplorer",
    "capacity_explorer",
    "collapse_explorer",
    "expert_colour",
    "expert_colours",
    "load_animation",
    "padding_explorer",
    "params_explorer",
    "plot_drop_policies",
    "plot_drop_rate_vs_capacity",
    "plot_expert_load",
    "plot_load_over_steps",
    "plot_moe_block",
    "plot_routing_heatmap",
    "routing_batch",
    "routing_explorer",
    "text_colour",
    "token_batch",
    "token_colouring",
    "token_html",
]
