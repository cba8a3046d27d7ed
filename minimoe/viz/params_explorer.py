"""The parameter explorer: what an MoE model stores against what one token uses.

One call, `params_explorer()`, returns a widget over the published configurations of
`minimoe.params.PUBLISHED_CONFIGS` (Mixtral-8x7B, OLMoE-1B-7B, Qwen3-30B-A3B). Pick a model,
then change its number of experts E, experts per token K and each expert's hidden size F; two
stacked bars show the total and the active (per token) parameters, split into the experts and
the shared part every token uses (embeddings, attention, norms, routers). Every number is
`minimoe.count_decoder_params`; this module only draws.

Things the explorer makes visible: the experts hold almost all of a model's parameters; K, not
E, sets the cost per token; many small experts (OLMoE, Qwen3: E = 64 or 128, small F) push the
active fraction far below Mixtral's 28 %.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go

from minimoe.params import PUBLISHED_CONFIGS, count_decoder_params
from minimoe.viz._widgets import Explorer, LiveFigure, control_layout, expert_colour, note

EXPERT_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
F_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)
SHARED_COLOUR = "#999999"  # embeddings, attention, norms, routers: what no expert owns


def split_params(config: dict) -> dict[str, int]:
    """Total and active parameters of a decoder config, split into experts and shared weights.

    Args:
        config: keyword arguments of `count_decoder_params` (as in `PUBLISHED_CONFIGS`).

    Returns:
        {"total", "active", "experts_total", "experts_active", "shared"} as ints, with
        total = experts_total + shared and active = experts_active + shared.
    """
    total, active = count_decoder_params(**config)
    E, K = config["n_experts"], config["top_k"]
    # with one expert more, total - active = n_layers * (E + 1 - K) experts (the router is active)
    bigger = count_decoder_params(**{**config, "n_experts": E + 1})
    per_expert = (bigger[0] - bigger[1]) // (E + 1 - K)  # one expert in every layer
    experts_total = per_expert * E
    return {"total": total, "active": active, "experts_total": experts_total,
            "experts_active": per_expert * K, "shared": total - experts_total}  # fmt: skip


def _short(n: int) -> str:
    """1.28B, 477M: the label inside a bar."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n < 1e10 else f"{n / 1e9:.1f}B"


class ParamsExplorer(Explorer):
    """The widget `params_explorer` returns (see the module docstring).

    Attributes:
        controls: "model" (Dropdown), "n_experts" and "top_k" (SelectionSlider, IntSlider),
            "f_scale" (SelectionSlider: each expert's hidden size F as a multiple of the model's).
        figures: "params": two stacked bars, total and active, experts and shared.
        config: the configuration counted last (a `count_decoder_params` keyword dict).
        counts: `split_params(config)`.
    """

    def __init__(self, model: str) -> None:
        names = list(PUBLISHED_CONFIGS)
        layout = control_layout("13em")
        controls = {
            "model": widgets.Dropdown(options=names, value=model, description="model", **layout),
            "n_experts": widgets.SelectionSlider(options=EXPERT_COUNTS, value=8,
                                                 description="experts E", **layout),
            "top_k": widgets.IntSlider(min=1, max=8, value=2, description="experts per token K",
                                       **layout),
            "f_scale": widgets.SelectionSlider(options=F_SCALES, value=1.0,
                                               description="expert size F ×", **layout),
        }  # fmt: skip
        bars = [go.Bar(y=["active per token", "total stored"], x=[0, 0], orientation="h",
                       name=name, marker_color=colour, textposition="inside", insidetextanchor="middle", textangle=0,
                       hovertemplate=name + ": %{x:,}<extra></extra>")
                for name, colour in (("experts", expert_colour(0)),
                                     ("shared: embeddings, attention, norms, routers",
                                      SHARED_COLOUR))]  # fmt: skip
        fig = LiveFigure(
            data=bars,
            layout=dict(barmode="stack", template="plotly_white", height=260,
                        margin={"l": 130, "r": 30, "t": 40, "b": 40},
                        xaxis_title="parameters", legend={"orientation": "h", "y": -0.35,
                                                                 "traceorder": "normal"},
                        modebar_orientation="v"),
        )  # fmt: skip
        self.summary = widgets.HTML()
        help_text = note("Pick a published model, then change E, K and the experts' size F. "
                         "The bars are minimoe.count_decoder_params of the configuration.")  # fmt: skip
        super().__init__([help_text, *controls.values(), fig, self.summary], controls=controls,
                         figures={"params": fig})  # fmt: skip
        self._hold = False
        self._model = None
        self._watch(self._update)
        self._timed("model", self._update)

    def _reset_to(self, model: str) -> None:
        """Put the sliders at the published model's own E, K and F."""
        config = PUBLISHED_CONFIGS[model]
        self._hold = True
        try:
            self.controls["n_experts"].value = config["n_experts"]
            self.controls["top_k"].max = config["n_experts"]
            self.controls["top_k"].value = config["top_k"]
            self.controls["f_scale"].value = 1.0
        finally:
            self._hold = False
        self._model = model

    def _update(self) -> None:
        model = self.controls["model"].value
        if model != self._model:
            self._reset_to(model)
        E = self.controls["n_experts"].value
        top_k = self.controls["top_k"]
        self._hold = True  # K can never exceed E: the slider's range follows E
        try:
            top_k.max = E
            top_k.value = min(top_k.value, E)
        finally:
            self._hold = False
        base = PUBLISHED_CONFIGS[model]
        F = max(1, round(base["intermediate_size"] * self.controls["f_scale"].value))
        self.config = {**base, "n_experts": E, "top_k": top_k.value, "intermediate_size": F}
        c = self.counts = split_params(self.config)
        fig = self.figures["params"]
        with fig.batch_update():
            fig.data[0].x = [c["experts_active"], c["experts_total"]]
            fig.data[1].x = [c["shared"], c["shared"]]
            fig.data[0].text = [_short(c["experts_active"]), _short(c["experts_total"])]
            fig.data[1].text = [_short(c["shared"])] * 2
            fig.layout.title = (f"{model} with E = {E}, K = {top_k.value}, F = {F}: "
                                f"{c['active'] / c['total']:.0%} of the weights run per token")  # fmt: skip
        published = count_decoder_params(**base)
        self.summary.value = (
            f"<div style='line-height:1.6'>total <b>{_billions(c['total'])}</b>, active per token "
            f"<b>{_billions(c['active'])}</b> ({c['active'] / c['total']:.1%}); the experts hold "
            f"{c['experts_total'] / c['total']:.0%} of the total. Published "
            f"{html.escape(model)}: {_billions(published[0])} total, "
            f"{_billions(published[1])} active.</div>"
        )


def params_explorer(model: str = "Mixtral-8x7B") -> ParamsExplorer:
    """An interactive total-vs-active parameter count over published MoE configurations.

    Args:
        model: the configuration shown first, a key of `minimoe.params.PUBLISHED_CONFIGS`.

    Returns:
        A `ParamsExplorer` (`.controls`, `.figures["params"]`, `.counts`).
    """
    if model not in PUBLISHED_CONFIGS:
        raise ValueError(f"model must be one of {list(PUBLISHED_CONFIGS)}, got {model!r}")
    return ParamsExplorer(model)
