"""Figures of routing over training: an animated per-expert load, and the collapse explorer.

    from minimoe.viz.training import load_animation, collapse_explorer
    load_animation(result.load_SE, title="no balancing")     # play button + step slider
    collapse_explorer(results=run_lab())                       # remedy menu + strength slider

`load_animation` draws, frame by frame, each expert's share of the routed slots at one training
step, with the even share 1/E as a line: watch the bars of a collapsing router drain into one or
two experts. `collapse_explorer` trains the lab's model (`minimoe.collapse.lab`) with the chosen
remedy at the chosen strength (about a second per run on one CPU core; runs are cached, and the
lab's own results can be handed in so the defaults show at once) and draws the load shares over
the steps as stacked bands, with the final statistics beside it.
"""

from __future__ import annotations

import html
import math

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch

from minimoe.collapse.lab import SETTINGS, STEPS, LabResult, get_setting, run_setting
from minimoe.collapse.task import ClusterTask, TaskConfig, make_task
from minimoe.viz._widgets import Explorer, LiveFigure, control_layout, expert_colours, note
from minimoe.viz.static import load_shares


def load_animation(
    load_SE: torch.Tensor | np.ndarray,
    *,
    title: str = "share of the routed slots per expert",
    max_frames: int = 40,
    frame_ms: int = 120,
    y_max: float | None = None,
) -> go.Figure:
    """An animated bar chart of each expert's share of the slots, one frame per recorded step.

    Args:
        load_SE: slots per expert at each step, (S, E) (counts or shares).
        title: the figure title.
        max_frames: at most this many frames (evenly spaced steps, the last one included).
        frame_ms: milliseconds per frame when playing.
        y_max: the top of the share axis, in (0, 1]. Give two animations the same value to
            compare them by eye (default: the largest share, rounded up to a multiple of 10 %).

    Returns:
        A plotly Figure with `frames`, a play/pause button and a step slider.
    """
    share_SE = load_shares(load_SE)
    S, E = share_SE.shape
    if S == 0:
        raise ValueError("load_SE has no steps to animate")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if y_max is None:
        y_max = max(0.1, math.ceil(float(share_SE.max()) * 10 - 1e-9) / 10)
    if not 0 < y_max <= 1:
        raise ValueError(f"y_max must be a share in (0, 1], got {y_max}")
    steps = sorted({int(round(s)) for s in np.linspace(0, S - 1, min(S, max_frames))})
    experts = [f"e{e}" for e in range(E)]
    colours = expert_colours(E)

    def bar(step: int) -> go.Bar:
        return go.Bar(x=experts, y=share_SE[step], marker_color=colours, name="share",
                      hovertemplate="%{x}: %{y:.1%}<extra></extra>")  # fmt: skip

    frames = [go.Frame(data=[bar(s)], name=str(s), layout={"title": f"{title} · step {s}"})
              for s in steps]  # fmt: skip
    fig = go.Figure(data=[bar(steps[0])], frames=frames)
    fig.add_hline(y=1 / E, line_dash="dash", line_color="#555")
    # the line's label sits in the right margin, never over a bar (the tallest is the one to read)
    fig.add_annotation(text=f"even share<br>1/E = {1 / E:.3f}", xref="paper", x=1.01,
                       xanchor="left", y=1 / E, yanchor="middle", showarrow=False,
                       font={"color": "#555", "size": 12}, align="left")  # fmt: skip
    play = {"frame": {"duration": frame_ms, "redraw": True}, "fromcurrent": True}
    pause = {"frame": {"duration": 0, "redraw": False}, "mode": "immediate"}
    fig.update_layout(
        title=f"{title} · step {steps[0]}",
        yaxis={"title": "share of slots", "range": [0, y_max], "tickformat": ".0%"},
        xaxis={"title": "expert"},
        template="plotly_white",
        height=360,
        margin={"t": 50, "b": 90, "r": 110},
        showlegend=False,
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0.0, "y": -0.22,
                      "xanchor": "left", "yanchor": "top",
                      "buttons": [{"label": "▶ play", "method": "animate", "args": [None, play]},
                                  {"label": "❚❚ pause", "method": "animate",
                                   "args": [[None], pause]}]}],
        sliders=[{"active": 0, "x": 0.26, "y": -0.12, "len": 0.74,
                  "currentvalue": {"prefix": "step "},
                  "steps": [{"label": str(s), "method": "animate",
                             "args": [[str(s)], {**pause, "frame": {"duration": 0,
                                                                    "redraw": True}}]}
                            for s in steps]}],
    )  # fmt: skip
    return fig


# remedy -> the strengths the slider offers (the lab's default is among them)
STRENGTHS = {
    "aux": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    "z": (0.0, 1e-4, 1e-3, 1e-2, 1e-1),
    "bias": (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    "capacity": (0.5, 1.0, 1.25, 1.5, 2.0, 4.0),
}
KNOB = {"aux": "aux-loss coefficient", "z": "z-loss coefficient", "bias": "bias rate γ",
        "capacity": "capacity factor"}  # fmt: skip


class CollapseExplorer(Explorer):
    """The widget `collapse_explorer` returns (see the module docstring).

    Attributes:
        controls: "setting" (a Dropdown of the lab's settings) and "strength" (a
            SelectionSlider of the remedy's knob; disabled for "no balancing").
        figures: "load": the stacked load shares over the training steps.
        cache: (setting name, strength) -> `LabResult`.
    """

    def __init__(self, *, steps: int, seed: int, results: list[LabResult] | None) -> None:
        self.steps, self.seed = steps, seed
        self.task: ClusterTask = make_task(TaskConfig())
        self.cache: dict[tuple[str, float], LabResult] = {}
        for res in results or []:
            if res.steps == steps and res.seed == seed and len(res.load_SE):
                base = next((s for s in SETTINGS if s.name == res.name), None)
                if base is not None:
                    self.cache[(base.name, base.strength)] = res
        names = [s.name for s in SETTINGS]
        setting = widgets.Dropdown(options=names, value=names[0], description="setting",
                                   **control_layout())  # fmt: skip
        strength = widgets.SelectionSlider(options=[0.0], value=0.0, description="strength",
                                           disabled=True, **control_layout())  # fmt: skip
        E = self.task.cfg.n_clusters
        colours = expert_colours(E)
        fig = LiveFigure(
            data=[go.Scatter(x=[], y=[], mode="lines", stackgroup="load", name=f"expert {e}",
                             line={"width": 0.5, "color": colours[e]}, fillcolor=colours[e])
                  for e in range(E)],
            layout={"height": 340, "margin": {"t": 40, "b": 40}, "template": "plotly_white",
                    "yaxis": {"title": "share of the routed slots", "range": [0, 1],
                              "tickformat": ".0%"},
                    "xaxis": {"title": "training step"}, "legend": {"orientation": "v"}},
        )  # fmt: skip
        self.summary = widgets.HTML()
        self.status = note("")
        children = [setting, strength, self.status, fig, self.summary]
        super().__init__(children, controls={"setting": setting, "strength": strength},
                         figures={"load": fig})  # fmt: skip
        self._watch(self._update)
        self._timed("setting", self._update)

    def _sync_strength(self, setting_name: str) -> None:
        """Give the slider the chosen remedy's strengths, at the lab's default value."""
        base = get_setting(setting_name)
        slider = self.controls["strength"]
        self._hold = True
        try:
            if base.remedy:
                options = STRENGTHS[base.remedy]
                slider.options = options
                slider.value = min(options, key=lambda v: abs(v - base.strength))
                slider.description = KNOB[base.remedy]
                slider.disabled = False
            else:
                slider.options, slider.value = (0.0,), 0.0
                slider.description, slider.disabled = "strength", True
        finally:
            self._hold = False
        self._last_setting = setting_name

    def result_for(self, setting_name: str, strength: float) -> LabResult:
        """The (cached) run of a setting at a strength."""
        base = get_setting(setting_name)
        key = (base.name, float(strength) if base.remedy else 0.0)
        if key not in self.cache:
            setting = base if not base.remedy or strength == base.strength else (
                base.with_strength(strength))  # fmt: skip
            self.status.value = f"training {html.escape(setting.name)} ({self.steps} steps)…"
            self.cache[key] = run_setting(setting, seed=self.seed, steps=self.steps, task=self.task)
        return self.cache[key]

    def _update(self) -> None:
        name = self.controls["setting"].value
        if getattr(self, "_last_setting", None) != name:
            self._sync_strength(name)
        res = self.result_for(name, self.controls["strength"].value)
        share_SE = load_shares(res.load_SE)
        x = np.arange(share_SE.shape[0])
        fig = self.figures["load"]
        with fig.batch_update():
            for e, trace in enumerate(fig.data):
                trace.x, trace.y = x, share_SE[:, e]
            fig.layout.title = f"{res.name}: who gets the slots, step by step"
        f = res.final
        self.status.value = f"<i>{html.escape(res.setting.note)}</i>"
        self.summary.value = (
            "<table style='font-size:0.9em'><tr>"
            + "".join(f"<th style='padding:0 8px'>{h}</th>" for h in
                      ("max/mean", "dead", "router entropy", "drop rate", "z-loss", "val loss"))
            + "</tr><tr>"
            + "".join(f"<td style='padding:0 8px;text-align:center'>{v}</td>" for v in (
                f"{f['max_over_mean']:.2f}", f"{f['dead_experts']}",
                f"{f['entropy']:.2f} / {math.log(len(f['routed_E'])):.2f}",
                f"{f['drop_rate']:.0%}", f"{f['z']:.2f}", f"{f['val_loss']:.3f}"))
            + "</tr></table>"
        )  # fmt: skip


def collapse_explorer(
    *, results: list[LabResult] | None = None, steps: int = STEPS, seed: int = 0
) -> CollapseExplorer:
    """An interactive view of the collapse lab: pick a setting and its remedy's strength.

    Args:
        results: runs already made (e.g. `run_lab()`'s), reused for the default strengths.
        steps: training steps of each run.
        seed: the training seed.

    Returns:
        A `CollapseExplorer` (`.controls["setting"]`, `.controls["strength"]`,
        `.figures["load"]`).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return CollapseExplorer(steps=steps, seed=seed, results=results)
