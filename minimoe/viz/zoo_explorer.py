"""The zoo explorer: token choice and expert choice side by side, on the same batch.

Token choice (chapters 02-03) lets every token pick its K experts, then caps each expert at C
slots, so a popular expert drops slots. Expert choice (Zhou et al. 2022, arXiv 2202.09368)
lets every expert pick its C tokens, so no expert overflows, but a token may be picked by
several experts or by none. One call, `zoo_explorer()`, returns a widget with controls for the
capacity factor, top-k and the input batch, and shows:

- a token x expert grid for each router: who got whom. Token choice: kept first choices in the
  expert's colour, kept later choices paler, dropped slots grey with a cross. Expert choice:
  each expert's C picks in its colour. Tokens left with no expert are marked under the grid;
- how many experts each token got, under each router (bars);
- the share of tokens with no expert against the capacity factor, both routers, this setting
  marked.

Both routers get the same capacity per expert, C = ceil(T·K·cf/E) (`minimoe.expert_capacity`,
DeepSpeed's formula; `minimoe.zoo.expert_choice_capacity` with the paper's factor c = K·cf,
experts per token on average), so they fill at most the same E·C (token, expert) pairs; expert
choice fills exactly E·C (C <= T). The router is a fixed, seeded linear map; its softmax
probabilities feed both routers. Token choice's gates are Mixtral's (`minimoe.route`), and its
queue is first come, first served (the "position" drop policy of `minimoe.assign_slots`).
Every number shown is computed by the library; this module only draws.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from plotly.subplots import make_subplots

from minimoe.capacity import assign_slots, expert_capacity
from minimoe.routing import route
from minimoe.viz._widgets import (
    DROPPED_COLOUR,
    Explorer,
    LiveFigure,
    column_layout,
    control_layout,
    expert_colours,
    note,
    pale,
)
from minimoe.viz.batches import TOKEN_BATCHES, token_batch
from minimoe.zoo import expert_choice, expert_choice_capacity

CURVE_CFS = tuple(np.round(np.arange(0.25, 3.01, 0.25), 2))
TOKEN_CHOICE_COLOUR = "#0072B2"  # expert 0's blue and expert 1's orange: the two routers
EXPERT_CHOICE_COLOUR = "#E69F00"
LOST_MARK = "#000000"


def _router_weights(d_model: int, n_experts: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n_experts, d_model, generator=gen) / d_model**0.5


def token_choice_pairs(logits_TE: torch.Tensor, top_k: int, capacity: int):
    """Token choice on these router logits: (expert_TK, keep_TK) with Mixtral's gates and the
    first-come, first-served queue of `minimoe.assign_slots`."""
    r = route(logits_TE, top_k, "mixtral")
    keep_TK, _ = assign_slots(r.expert_TK, r.gate_TK, logits_TE.shape[1], capacity, "position")
    return r.expert_TK, keep_TK


def experts_per_token(token_EC: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """How many experts picked each token under expert choice (int64, length T)."""
    return torch.bincount(token_EC.reshape(-1), minlength=n_tokens)


def kept_per_token(keep_TK: torch.Tensor) -> torch.Tensor:
    """How many of its K slots each token kept under token choice (int64, length T)."""
    return keep_TK.sum(dim=1)


class ZooExplorer(Explorer):
    """The widget `zoo_explorer` returns (see the module docstring).

    Attributes beyond `Explorer`'s: `probs_TE` (the router's probabilities for this batch),
    `capacity` (C, both routers), `expert_TK` and `keep_TK` (token choice), `token_EC` and
    `gate_EC` (expert choice), `tc_count_T` and `ec_count_T` (experts per token), `summary` (the
    HTML line of counts).
    """

    def __init__(self, batches: dict, *, n_experts: int, top_k: int, seed: int) -> None:
        self.batches = batches
        self.n_experts = n_experts
        d_models = {x.shape[1] for x in batches.values()}
        self._w = {D: _router_weights(D, n_experts, seed) for D in d_models}
        self._curves: dict[tuple, tuple[list[float], list[float]]] = {}
        s = control_layout()
        c = {
            "capacity_factor": widgets.FloatSlider(1.0, min=0.25, max=3.0, step=0.25,
                                                   description="capacity factor cf", **s),
            "top_k": widgets.IntSlider(top_k, min=1, max=min(4, n_experts), description="top-k K",
                                       **s),
            "batch": widgets.Dropdown(options=list(batches), description="input batch",
                                      style=s["style"], layout=s["layout"]),
        }  # fmt: skip
        self.summary = widgets.HTML()
        grid = LiveFigure(
            make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                          row_heights=[0.37, 0.37, 0.26],
                          subplot_titles=("token choice: each token picks K experts, each "
                                          "expert keeps its first C",
                                          "expert choice: each expert picks its C best tokens",
                                          "experts per token"))
        )  # fmt: skip
        for row in (1, 2):
            grid.add_heatmap(z=[[None]], showscale=False, xgap=1, ygap=1, hoverinfo="text",
                             hoverongaps=False, row=row, col=1)  # fmt: skip
            grid.add_scatter(x=[], y=[], mode="markers", hoverinfo="skip", showlegend=False,
                             marker=dict(symbol="x-thin", size=7, line=dict(width=1.3,
                                                                            color="white")),
                             row=row, col=1)  # fmt: skip
            grid.add_scatter(x=[], y=[], mode="markers", showlegend=row == 1, hoverinfo="x",
                             name="token with no expert", legendgroup="lost",
                             marker=dict(symbol="triangle-up", size=9, color=LOST_MARK),
                             row=row, col=1)  # fmt: skip
        grid.add_bar(x=[], y=[], name="token choice (kept slots)", row=3, col=1,
                     marker_color=TOKEN_CHOICE_COLOUR)  # fmt: skip
        grid.add_bar(x=[], y=[], name="expert choice", row=3, col=1,
                     marker_color=EXPERT_CHOICE_COLOUR)  # fmt: skip
        grid.update_layout(
            template="plotly_white", barmode="group", bargap=0.15, height=640,
            margin=dict(l=60, r=20, t=70, b=50), modebar_orientation="v",
            legend=dict(orientation="h", y=1.07, x=1, xanchor="right", yanchor="bottom"),
        )  # fmt: skip
        for row in (1, 2):
            grid.update_yaxes(title_text="expert", dtick=1, row=row, col=1)
            grid.update_yaxes(showgrid=False, row=row, col=1)
        grid.update_yaxes(title_text="experts", dtick=1, row=3, col=1)
        grid.update_xaxes(title_text="token", row=3, col=1)
        grid.update_annotations(font_size=13, x=0, xanchor="left")
        for row in (1, 2):  # the grid's background shows the (token, expert) pairs not taken
            grid.update_xaxes(showgrid=False, row=row, col=1)
        grid.layout.plot_bgcolor = "white"
        curve = LiveFigure()
        curve.add_scatter(x=[], y=[], mode="lines+markers", name="token choice",
                          line=dict(color=TOKEN_CHOICE_COLOUR, width=2), marker_size=5)  # fmt: skip
        curve.add_scatter(x=[], y=[], mode="lines+markers", name="expert choice",
                          line=dict(color=EXPERT_CHOICE_COLOUR, width=2, dash="dash"),
                          marker_size=5)  # fmt: skip
        curve.add_scatter(x=[], y=[], mode="markers", name="this setting", showlegend=False,
                          marker=dict(size=12, color="black", symbol="circle-open",
                                      line=dict(width=2)))  # fmt: skip
        curve.update_layout(
            title="Tokens with no expert vs capacity factor", xaxis_title="capacity factor cf",
            yaxis_title="share of tokens", yaxis_range=[-0.02, 1], yaxis_tickformat=".0%",
            template="plotly_white", height=300, width=480, modebar_orientation="v",
            legend=dict(x=0.98, xanchor="right", y=0.98), margin=dict(l=60, r=20, t=50, b=50),
        )  # fmt: skip
        header = note(
            "<b>Zoo explorer.</b> The same router probabilities, two ways to fill E·C "
            "(token, expert) pairs: tokens pick experts (token choice) or experts pick tokens "
            "(expert choice). ▲ marks a token that got no expert: it passes on the residual only."
        )
        left = widgets.VBox(layout=column_layout(), children=[header, *c.values(), self.summary])
        super().__init__([widgets.HBox([left, curve]), grid], controls=c,
                         figures={"grid": grid, "curve": curve})  # fmt: skip
        self._watch(self._update)
        self._timed("init", self._update)

    def _logits(self, batch: str) -> torch.Tensor:
        x_TD = self.batches[batch]
        return x_TD @ self._w[x_TD.shape[1]].t()

    def _curve(self, batch: str, K: int) -> tuple[list[float], list[float]]:
        """Share of tokens with no expert at each cf of CURVE_CFS, (token, expert choice)."""
        key = (batch, K)
        if key not in self._curves:
            logits_TE = self._logits(batch)
            probs_TE = torch.softmax(logits_TE, dim=-1)
            T, E = probs_TE.shape
            tc, ec = [], []
            for cf in CURVE_CFS:
                C = expert_capacity(T, E, K, "deepspeed", float(cf))
                _, keep_TK = token_choice_pairs(logits_TE, K, C)
                tc.append(float((kept_per_token(keep_TK) == 0).double().mean()))
                token_EC, _ = expert_choice(probs_TE, expert_choice_capacity(T, E, K * float(cf)))
                ec.append(float((experts_per_token(token_EC, T) == 0).double().mean()))
            self._curves[key] = (tc, ec)
        return self._curves[key]

    def _update(self) -> None:
        c = {name: w.value for name, w in self.controls.items()}
        cf, K = float(c["capacity_factor"]), int(c["top_k"])
        logits_TE = self._logits(c["batch"])
        self.probs_TE = probs_TE = torch.softmax(logits_TE, dim=-1)
        T, E = probs_TE.shape
        self.capacity = C = expert_capacity(T, E, K, "deepspeed", cf)
        self.expert_TK, self.keep_TK = token_choice_pairs(logits_TE, K, C)
        self.token_EC, self.gate_EC = expert_choice(probs_TE, expert_choice_capacity(T, E, K * cf))
        self.tc_count_T = kept_per_token(self.keep_TK)
        self.ec_count_T = experts_per_token(self.token_EC, T)
        self._draw_grid(T, E, K)
        tc, ec = self._curve(c["batch"], K)
        curve = self.figures["curve"]
        with curve.batch_update():
            curve.data[0].update(x=CURVE_CFS, y=tc)
            curve.data[1].update(x=CURVE_CFS, y=ec)
            lost = [float((n == 0).double().mean()) for n in (self.tc_count_T, self.ec_count_T)]
            curve.data[2].update(x=[cf, cf], y=lost)
        self._write_summary(T, E, K)

    def _draw_grid(self, T: int, E: int, K: int) -> None:
        probs = self.probs_TE.numpy()
        solid = expert_colours(E)
        # colour codes: expert e's colour -> e, its pale tint -> E + e, dropped -> 2E
        colours = solid + [pale(col) for col in solid] + [DROPPED_COLOUR]
        scale = []
        for i, colour in enumerate(colours):
            scale += [[i / len(colours), colour], [(i + 1) / len(colours), colour]]
        # token choice
        z_tc = np.full((E, T), np.nan)
        text_tc = np.full((E, T), "", dtype=object)
        e_N = self.expert_TK.reshape(-1).numpy()
        keep_N = self.keep_TK.reshape(-1).numpy()
        t_N, k_N = np.divmod(np.arange(T * K), K)
        z_tc[e_N, t_N] = np.where(keep_N, e_N + E * (k_N > 0), 2 * E)
        text_tc[e_N, t_N] = [
            f"token {t}, expert {e}: choice {k + 1}, p = {probs[t, e]:.3f}, "
            f"{'kept' if kept else 'DROPPED (expert full)'}"
            for t, e, k, kept in zip(t_N, e_N, k_N, keep_N)
        ]
        # expert choice
        z_ec = np.full((E, T), np.nan)
        text_ec = np.full((E, T), "", dtype=object)
        C_ec = self.token_EC.shape[1]
        te_N = self.token_EC.reshape(-1).numpy()
        ee_N, rank_N = np.divmod(np.arange(E * C_ec), max(C_ec, 1))
        z_ec[ee_N, te_N] = ee_N
        text_ec[ee_N, te_N] = [
            f"token {t}, expert {e}: the expert's pick {r + 1} of {C_ec}, p = {probs[t, e]:.3f}"
            for t, e, r in zip(te_N, ee_N, rank_N)
        ]
        lost_tc = np.flatnonzero(self.tc_count_T.numpy() == 0)
        lost_ec = np.flatnonzero(self.ec_count_T.numpy() == 0)
        fig = self.figures["grid"]
        with fig.batch_update():
            for i, (z, text, lost) in enumerate(((z_tc, text_tc, lost_tc),
                                                 (z_ec, text_ec, lost_ec))):  # fmt: skip
                zz = z.astype(object)
                zz[np.isnan(z)] = None  # JSON null: NaN is not valid JSON for the widget
                fig.data[3 * i].update(z=zz.tolist(), text=text.tolist(), colorscale=scale,
                                       zmin=-0.5, zmax=len(colours) - 0.5,
                                       x=list(range(T)), y=list(range(E)))  # fmt: skip
                fig.data[3 * i + 2].update(x=lost.tolist(), y=[-0.85] * len(lost))
            dropped = ~keep_N
            fig.data[1].update(x=t_N[dropped].tolist(), y=e_N[dropped].tolist())
            fig.data[4].update(x=[], y=[])
            fig.data[6].update(x=list(range(T)), y=self.tc_count_T.tolist())
            fig.data[7].update(x=list(range(T)), y=self.ec_count_T.tolist())
            for row in (1, 2):
                fig.update_yaxes(range=[-1.3, E - 0.5], tickvals=list(range(E)), row=row, col=1)
            top = int(max(self.tc_count_T.max(), self.ec_count_T.max(), 1)) if T else 1
            fig.update_yaxes(range=[0, top + 0.5], row=3, col=1)
            fig.update_xaxes(range=[-0.5, T - 0.5])

    def _write_summary(self, T: int, E: int, K: int) -> None:
        C = self.capacity
        kept = int(self.keep_TK.sum())
        pairs_ec = self.token_EC.numel()
        lost_tc = int((self.tc_count_T == 0).sum())
        lost_ec = int((self.ec_count_T == 0).sum())
        many_ec = int((self.ec_count_T > K).sum())
        self.summary.value = (
            "<div style='line-height:1.6;margin-top:6px'>"
            f"T = {T} tokens, E = {E}, K = {K}: C = <b>{C}</b> per expert, "
            f"E·C = <b>{E * C}</b> pairs at most<br>"
            f"<b>token choice</b>: {T * K} slots routed, {kept} kept, {T * K - kept} dropped; "
            f"<b>{lost_tc}</b> tokens with no expert<br>"
            f"<b>expert choice</b>: {pairs_ec} pairs (every expert full); <b>{lost_ec}</b> "
            f"tokens with no expert, {many_ec} with more than K</div>"
        )


def zoo_explorer(
    batches: dict | None = None,
    *,
    n_experts: int = 8,
    top_k: int = 2,
    n_tokens: int = 48,
    d_model: int = 16,
    seed: int = 0,
) -> ZooExplorer:
    """An interactive side-by-side of token choice and expert choice (see the module docstring).

    Args:
        batches: name -> x_TD token vectors to route (each (T, D)); default: the "random",
            "clustered" and "skewed" batches of `minimoe.viz.batches` with n_tokens, d_model.
        n_experts: E (2 to 16: the grid has one row per expert).
        top_k: K at start (1 to min(4, E)).
        n_tokens, d_model: T and D of the default batches (T from 1 to 128, so a token's column
            stays visible).
        seed: seeds the default batches and the router.

    Returns:
        A `ZooExplorer` (an ipywidgets VBox with `.controls`, `.figures`, `.last_update_ms`).
    """
    if not isinstance(n_experts, int) or not 2 <= n_experts <= 16:
        raise ValueError(f"n_experts must be an int in [2, 16], got {n_experts!r}")
    if not isinstance(top_k, int) or not 1 <= top_k <= min(4, n_experts):
        raise ValueError(f"top_k must be an int in [1, {min(4, n_experts)}], got {top_k!r}")
    if batches is None:
        if not isinstance(n_tokens, int) or not 1 <= n_tokens <= 128:
            raise ValueError(f"n_tokens must be an int in [1, 128], got {n_tokens!r}")
        batches = {n: token_batch(n, n_tokens, d_model, seed=seed) for n in TOKEN_BATCHES}
    if not isinstance(batches, dict) or not batches:
        raise TypeError("batches must be a non-empty dict of name -> x_TD tensors")
    for name, x_TD in batches.items():
        if not isinstance(x_TD, torch.Tensor) or x_TD.dim() != 2 or not x_TD.is_floating_point():
            raise ValueError(f"batch {name!r} must be a float (T, D) tensor")
        if not 1 <= x_TD.shape[0] <= 128:
            raise ValueError(f"batch {name!r} has T={x_TD.shape[0]} tokens; use 1 to 128")
    batches = {n: x.detach().cpu().float() for n, x in batches.items()}
    return ZooExplorer(batches, n_experts=n_experts, top_k=top_k, seed=seed)
