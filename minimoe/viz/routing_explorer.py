"""The routing explorer: change the router's settings and watch the routing of a batch change.

One call, `routing_explorer()`, returns a widget with controls for the number of experts, top-k,
the gating convention (`minimoe.route`), the router noise and its strength (`minimoe.Router`,
applied in training mode only), the router temperature and the input batch
(`minimoe.viz.batches`). It shows:
- a token x expert heatmap of the router probabilities (DeepSeek-V3: the sigmoid scores), each
  chosen expert marked in its colour, the marker's shape its rank and its size its gate weight;
- the load per expert (routed slots; they sum to T*K);
- the mean router entropy and the load entropy (`minimoe.routing_stats`), and, in training
  mode, how many tokens the noise re-routed compared with evaluation.

The router is a fixed, seeded linear map (weights drawn once for the largest E; E experts use
the first E rows), so changing one control changes only what that control changes. Noise is
drawn once per setting from a fixed seed, so the strength slider scales one noise sample.
Left out: group-limited top-k and the DeepSeek-V3 selection bias (see chapter 08).
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
import torch

from minimoe.config import GATINGS, NOISES
from minimoe.metrics import routing_stats
from minimoe.router import Router
from minimoe.routing import route
from minimoe.viz._widgets import (
    Explorer,
    LiveFigure,
    column_layout,
    control_layout,
    expert_colours,
    note,
)
from minimoe.viz.batches import TOKEN_BATCHES, token_batch

RANK_SYMBOLS = ("circle", "diamond", "square")  # 1st, 2nd, 3rd and later choices
NOISE_HELP = {
    "none": "no noise",
    "shazeer": "strength = the std of the Gaussian noise on the logits (Shazeer et al. 2017)",
    "jitter": "strength = ε of the jitter x·U(1−ε, 1+ε) on the router input (capped at 0.99)",
    "gumbel": "strength = the scale of the Gumbel noise added for the selection only",
}


HEATMAP_ROW_PX = 20  # per expert, so that E = 8 with the controls fits a 900 px window
HEATMAP_MAX_PX = 460


def heatmap_height(n_experts: int) -> int:
    """Pixel height of the heatmap: 20 px per expert plus the title and axes, at most 460."""
    return min(120 + HEATMAP_ROW_PX * n_experts, HEATMAP_MAX_PX)


def _router_weights(d_model: int, n_experts: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n_experts, d_model, generator=gen) / d_model**0.5


class RoutingExplorer(Explorer):
    """The widget `routing_explorer` returns (see the module docstring).

    Attributes beyond `Explorer`'s: `routing` (the `minimoe.Routing` shown), `stats` (its
    `RoutingStats`), `eval_routing` (the same batch routed without noise), `info` (the HTML
    line with the entropies).
    """

    def __init__(self, batches: dict, *, n_experts: int, top_k: int, seed: int,
                 max_experts: int, max_tokens: int, tokens=None) -> None:  # fmt: skip
        self.batches = batches
        self.tokens = tokens
        self.seed = seed
        self.max_tokens = max_tokens
        d_models = {x.shape[1] for x in batches.values()}
        self._w = {D: _router_weights(D, max_experts, seed) for D in d_models}
        T_max = max(x.shape[0] for x in batches.values())
        slider = control_layout()
        c = {
            "batch": widgets.Dropdown(options=list(batches), description="input batch",
                                      style=slider["style"], layout=slider["layout"]),
            "n_experts": widgets.IntSlider(n_experts, min=2, max=max_experts,
                                           description="experts E", **slider),
            "top_k": widgets.IntSlider(top_k, min=1, max=n_experts, description="top-k K",
                                       **slider),
            "gating": widgets.Dropdown(options=list(GATINGS), value="mixtral",
                                       description="gating", style=slider["style"],
                                       layout=slider["layout"]),
            "temperature": widgets.FloatLogSlider(1.0, base=10, min=-1, max=1, step=0.05,
                                                  description="temperature τ (l/τ)", **slider),
            "mode": widgets.ToggleButtons(options=["eval", "training"], value="eval",
                                          description="router mode", style=slider["style"]),
            "noise": widgets.Dropdown(options=list(NOISES), value="none",
                                      description="noise (training)", style=slider["style"],
                                      layout=slider["layout"]),
            "noise_strength": widgets.FloatSlider(0.5, min=0.0, max=2.0, step=0.05,
                                                  description="noise strength", **slider),
            "window": widgets.IntSlider(0, min=0, max=max(T_max - 1, 0), step=max_tokens,
                                        description="first token shown", **slider),
        }  # fmt: skip
        self.info = widgets.HTML()
        self.noise_note = note("")
        heat = LiveFigure()
        heat.add_heatmap(z=[[0.0]], colorscale="Greys", zmin=0.0, colorbar=dict(
            title=dict(text="prob.", side="right"), thickness=12),
            hovertemplate="token %{x}<br>expert %{y}<br>p = %{z:.3f}<extra></extra>")  # fmt: skip
        names = ("1st choice", "2nd choice", "3rd+ choice")
        for name, symbol in zip(names, RANK_SYMBOLS):
            heat.add_scatter(x=[], y=[], mode="markers", name=name, showlegend=False,
                             marker=dict(symbol=symbol, line=dict(color="black", width=1)),
                             cliponaxis=False,  # whole markers on the first and last token
                             hovertemplate="token %{x} → expert %{y}<br>gate %{customdata:.3f}"
                                           f"<extra>{name}</extra>")  # fmt: skip
        heat.update_layout(
            title="Router probabilities (grey) and the chosen experts<br><sup>● 1st choice · "
            "◆ 2nd choice · ■ 3rd and later · marker size = gate weight</sup>",
            xaxis_title="token", yaxis_title="expert", yaxis_dtick=1, template="plotly_white", modebar_orientation="v",
            width=940, margin=dict(l=60, r=20, t=60, b=45),
        )  # fmt: skip
        load = LiveFigure()
        load.add_bar(x=[], y=[], name="routed slots",
                     marker=dict(line=dict(color="black", width=0.5)),
                     hovertemplate="expert %{x}: %{y} slots<extra></extra>")  # fmt: skip
        load.add_scatter(x=[], y=[], mode="lines", name="balanced T·K/E",
                         line=dict(color="#555555", dash="dot"))  # fmt: skip
        load.update_layout(
            xaxis_title="expert", yaxis_title="slots", xaxis_dtick=1, template="plotly_white", modebar_orientation="v",
            height=270, width=520, showlegend=False, margin=dict(l=60, r=20, t=50, b=50),
        )  # fmt: skip
        header = note(
            "<b>Routing explorer.</b> Noise acts only in <b>training</b> mode; in <b>eval</b> "
            "mode the router is deterministic. Temperature changes the weights and the entropy, "
            "not which experts are chosen (unless noise is on)."
        )
        left = widgets.VBox(layout=column_layout(), children=[header, *c.values(), self.noise_note])
        right = widgets.VBox([load, self.info], layout=widgets.Layout(width="560px"))
        children = [widgets.HBox([left, right]), heat]
        super().__init__(children, controls=c, figures={"heatmap": heat, "load": load})
        self._watch(self._update)
        self._timed("init", self._update)

    def _logits(self, x_TD: torch.Tensor, E: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Router logits (the library's Router), with this setting's noise in training mode."""
        c = {name: w.value for name, w in self.controls.items()}
        training = c["mode"] == "training" and c["noise"] != "none"
        strength = c["noise_strength"]
        router = Router(x_TD.shape[1], E, noise=c["noise"] if training else "none",
                        jitter_eps=min(strength, 0.99))  # fmt: skip
        with torch.no_grad():
            router.w_ED.copy_(self._w[x_TD.shape[1]][:E])
        router.train(training)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + 2)
            logits_TE, select_noise_TE = router(x_TD)
        if training and c["noise"] == "shazeer":
            # the router's noise std is softplus(x W_noise) = ln 2 at init; rescale to `strength`
            clean_TE = x_TD.float() @ router.w_ED.detach().t()
            logits_TE = clean_TE + (logits_TE - clean_TE) * (strength / math.log(2.0))
        if select_noise_TE is not None:
            select_noise_TE = select_noise_TE * strength
        return logits_TE / c["temperature"], select_noise_TE

    def _update(self) -> None:
        c = self.controls
        E = c["n_experts"].value
        self._hold = True  # clamp top-k to E without a second update
        c["top_k"].max = E
        c["noise_strength"].disabled = c["noise"].value == "none" or c["mode"].value == "eval"
        self._hold = False
        K, gating = c["top_k"].value, c["gating"].value
        x_TD = self.batches[c["batch"].value]
        T = x_TD.shape[0]
        logits_TE, select_noise_TE = self._logits(x_TD, E)
        self.routing = route(logits_TE, K, gating, select_noise_TE=select_noise_TE)
        clean_TE = x_TD.float() @ self._w[x_TD.shape[1]][:E].t() / c["temperature"].value
        self.eval_routing = route(clean_TE, K, gating)
        self.stats = routing_stats(self.routing.expert_TK, E, probs_TE=self.routing.probs_TE)
        self._draw(T, E, K)

    def _draw(self, T: int, E: int, K: int) -> None:
        c, r, s = self.controls, self.routing, self.stats
        start = min(c["window"].value, max(T - 1, 0))
        stop = min(start + self.max_tokens, T)
        x_n = np.arange(start, stop)
        probs_nE = r.probs_TE[start:stop].numpy()
        expert_nK = r.expert_TK[start:stop].numpy()
        gate_nK = r.gate_TK[start:stop].numpy()
        colours = np.array(expert_colours(E))
        heat, load = self.figures["heatmap"], self.figures["load"]
        score = "sigmoid score" if c["gating"].value == "deepseek_v3" else "router probability"
        with heat.batch_update():
            heat.data[0].update(z=probs_nE.T, x=x_n, y=np.arange(E))
            for k in range(len(RANK_SYMBOLS)):
                ks = range(k, k + 1) if k < len(RANK_SYMBOLS) - 1 else range(k, K)
                e = expert_nK[:, list(ks)].T.reshape(-1) if k < K else np.zeros(0, dtype=int)
                g = gate_nK[:, list(ks)].T.reshape(-1) if k < K else np.zeros(0)
                heat.data[1 + k].update(x=np.tile(x_n, len(ks)) if k < K else [], y=e,
                                        customdata=g, marker=dict(color=colours[e],
                                        size=4 + 12 * np.sqrt(np.clip(g, 0, 1))))  # fmt: skip
            heat.layout.height = heatmap_height(E)
            heat.layout.yaxis.range = [-0.5, E - 0.5]
            heat.layout.xaxis.range = [start - 0.5, max(stop, start + 1) - 0.5]
            heat.data[0].colorbar.title.text = score
            labels = self.tokens if self.tokens is not None and len(self.tokens) == T else None
            heat.layout.xaxis.tickvals = None if labels is None else x_n
            heat.layout.xaxis.ticktext = None if labels is None else [labels[i] for i in x_n]
            heat.layout.xaxis.title.text = f"token ({start}–{stop - 1} of {T})"
        with load.batch_update():
            load.data[0].update(x=np.arange(E), y=s.routed_E.numpy(), marker_color=colours)
            load.data[1].update(x=[-0.5, E - 0.5], y=[T * K / E] * 2)
            load.layout.title.text = f"Slots per expert (sum = T·K = {T}·{K} = {T * K})"
        changed = int((self.routing.expert_TK.sort(1).values
                       != self.eval_routing.expert_TK.sort(1).values).any(1).sum())  # fmt: skip
        mode = c["mode"].value
        noise = c["noise"].value
        self.noise_note.value = note(
            f"<b>{mode} mode</b>: " + ("noise off" if mode == "eval" or noise == "none"
                                       else f"{NOISE_HELP[noise]}")
        ).value  # fmt: skip
        rerouted = (f" · noise re-routed <b>{changed}</b> of {T} tokens vs eval"
                    if mode == "training" and noise != "none" else "")  # fmt: skip
        self.info.value = (
            f"<div style='line-height:1.5;padding:0 0 0 40px'>mean router entropy "
            f"<b>{s.entropy:.3f}</b> nats (at most ln {E} = {math.log(E):.3f}, a router with no "
            f"preference) · load entropy <b>{s.load_entropy:.3f}</b> (ln {E} for an even load) "
            f"· max/mean load "
            f"<b>{s.max_over_mean:.2f}</b> · unused experts <b>{s.dead_experts}</b>{rerouted}</div>"
        )


def routing_explorer(
    x_TD: torch.Tensor | None = None,
    *,
    batches: dict[str, torch.Tensor] | None = None,
    n_experts: int = 8,
    top_k: int = 2,
    seed: int = 0,
    tokens: list[str] | None = None,
    n_tokens: int = 256,
    d_model: int = 32,
    max_experts: int = 32,
    max_tokens: int = 64,
) -> RoutingExplorer:
    """An interactive routing explorer (see the module docstring).

    Args:
        x_TD: a batch of tokens to route, (T, D); shown first, as "x_TD".
        batches: more named batches, name -> x_TD (default: `minimoe.viz.batches`'
            "random", "clustered" and "skewed", n_tokens x d_model each).
        n_experts, top_k: the starting E and K.
        seed: seeds the router weights, the noise and the default batches.
        tokens: labels of x_TD's tokens (the heatmap's x axis).
        n_tokens, d_model: T and D of the default batches.
        max_experts: the largest E the slider offers.
        max_tokens: tokens shown in the heatmap at once (a slider moves the window).

    Returns:
        A `RoutingExplorer` (an ipywidgets VBox with `.controls`, `.figures`, `.last_update_ms`).
    """
    all_batches: dict[str, torch.Tensor] = {}
    if x_TD is not None:
        all_batches["x_TD"] = x_TD
    if batches is not None:
        all_batches.update(batches)
    if not all_batches:
        all_batches = {n: token_batch(n, n_tokens, d_model, seed) for n in TOKEN_BATCHES}
    for name, x in all_batches.items():
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"batch {name!r} must be a (T >= 1, D) tensor")
        if not torch.isfinite(x).all():
            raise ValueError(f"batch {name!r} holds NaN or inf")
    if not 2 <= n_experts <= max_experts:
        raise ValueError(f"n_experts must be in [2, max_experts={max_experts}], got {n_experts}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    batches_cpu = {n: x.detach().float().cpu() for n, x in all_batches.items()}
    return RoutingExplorer(batches_cpu, n_experts=n_experts, top_k=top_k, seed=seed,
                           max_experts=max_experts, max_tokens=max_tokens, tokens=tokens)  # fmt: skip
