"""The capacity explorer: see each expert's queue fill up and which tokens lose their slot.

One call, `capacity_explorer()`, returns a widget with controls for the capacity factor, the
capacity formula (`minimoe.expert_capacity`), the drop policy (`minimoe.assign_slots`),
renormalising the survivors (`minimoe.renormalize_survivors`) and the routing batch. It shows:
- every expert's queue: one cell per routed slot, in the policy's priority order, kept slots
  in the expert's colour, dropped ones grey and crossed, the capacity C as a line;
- the drop rate against the capacity factor (slots, and tokens left with no expert), the
  current setting marked;
- C, the drop rate, and a table of which tokens lost which slot, with their gates after the
  drop (renormalised or not).

"switch" here is the Switch Transformer paper's C = int(T/E * cf) (no ×K, so it drops about
half the slots at K = 2 and cf = 1: the missing-×K mistake), passed to the library's fixed
"switch" capacity. One routing group (all T tokens); min_capacity is a keyword argument.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import torch

from minimoe.capacity import assign_slots, expert_capacity, renormalize_survivors
from minimoe.config import DROP_POLICIES
from minimoe.viz._widgets import (
    DROPPED_COLOUR,
    DROPPED_EDGE,
    EMPTY_COLOUR,
    Explorer,
    LiveFigure,
    column_layout,
    control_layout,
    expert_colours,
    note,
    pale,
)
from minimoe.viz.batches import ROUTING_BATCHES, routing_batch
from minimoe.viz.drops import drop_metric

FORMULAS = {
    "deepspeed": "deepspeed: ⌈T/E·cf·K⌉",
    "megatron": "megatron: ⌈T·K/E·cf⌉",
    "tutel": "tutel: K·⌊cf·⌈T/E⌉⌋",
    "switch": "switch paper: ⌊T/E·cf⌋ (no ×K)",
    "dropless": "dropless: no limit",
}
CURVE_CFS = tuple(np.round(np.arange(0.1, 3.01, 0.1), 2))
MAX_TABLE_ROWS = 12


TABLE_CELL = "style='padding:2px 12px 2px 0;text-align:left;white-space:nowrap'"


def capacity_for(T: int, E: int, K: int, formula: str, cf: float, min_capacity: int = 0):
    """C by `minimoe.expert_capacity`; "switch" gets the paper's fixed int(T/E * cf)."""
    fixed = max(1, int(T / E * cf)) if formula == "switch" else None
    return expert_capacity(T, E, K, formula, cf, min_capacity, fixed)


class CapacityExplorer(Explorer):
    """The widget `capacity_explorer` returns (see the module docstring).

    Attributes beyond `Explorer`'s: `capacity` (C, or None), `keep_TK`, `queue_TK` (each slot's
    place in its expert's queue, dropped ones included), `gate_after_TK` (gates after the drop),
    `drop_rate` (fraction of slots dropped), `summary` and `table` (HTML widgets).
    """

    def __init__(self, routings: dict, *, n_experts: int, seed: int, min_capacity: int) -> None:
        self.routings = routings
        self.n_experts = n_experts
        self.seed = seed
        self.min_capacity = min_capacity
        self._curves: dict[tuple, tuple[list[float], list[float]]] = {}
        s = control_layout()
        drop_down = dict(style=s["style"], layout=s["layout"])
        c = {
            "capacity_factor": widgets.FloatSlider(1.0, min=0.1, max=3.0, step=0.05,
                                                   description="capacity factor cf", **s),
            "formula": widgets.Dropdown(options=[(v, k) for k, v in FORMULAS.items()],
                                        value="deepspeed", description="capacity formula",
                                        **drop_down),
            "policy": widgets.Dropdown(options=list(DROP_POLICIES), value="position",
                                       description="drop policy", **drop_down),
            "renormalize": widgets.Checkbox(False, description="renormalise",
                                            style=s["style"], layout=s["layout"]),
            "batch": widgets.Dropdown(options=list(routings), description="routing batch",
                                      **drop_down),
        }  # fmt: skip
        self.summary = widgets.HTML()
        self.table = widgets.HTML()
        queues = LiveFigure()
        queues.add_heatmap(z=[[0.0]], showscale=False, xgap=1, ygap=1, hoverinfo="text",
                           hoverongaps=False)  # fmt: skip
        queues.add_scatter(x=[], y=[], mode="markers", name="dropped", hoverinfo="skip",
                           showlegend=False,
                           marker=dict(symbol="x-thin", size=7, line=dict(width=1.2,
                                                                          color="white")))  # fmt: skip
        queues.add_scatter(x=[], y=[], mode="lines", name="capacity C",
                           line=dict(color="black", width=2.5, dash="dash"))  # fmt: skip
        queues.update_layout(
            xaxis_title="place in the expert's queue (the drop policy's priority order)",
            yaxis_title="expert", yaxis_dtick=1, template="plotly_white", modebar_orientation="v",
            plot_bgcolor=EMPTY_COLOUR, legend=dict(orientation="h", y=1.02, x=1,
                                                   xanchor="right", yanchor="bottom"),
            margin=dict(l=60, r=20, t=60, b=50),
        )  # fmt: skip
        curve = LiveFigure()
        curve.add_scatter(x=[], y=[], mode="lines", name="slots dropped",
                          line=dict(color=expert_colours(1)[0], width=2))  # fmt: skip
        curve.add_scatter(x=[], y=[], mode="lines", name="tokens with no expert left",
                          line=dict(color=expert_colours(2)[1], width=2, dash="dash"))  # fmt: skip
        curve.add_scatter(x=[], y=[], mode="markers", name="this setting", showlegend=False,
                          marker=dict(size=11, color="black", symbol="circle-open",
                                      line=dict(width=2)))  # fmt: skip
        curve.update_layout(
            title="Drop rate vs capacity factor", xaxis_title="capacity factor cf",
            yaxis_title="fraction", yaxis_range=[0, 1], template="plotly_white", modebar_orientation="v", height=300,
            width=470, legend=dict(x=0.98, xanchor="right", y=0.98), margin=dict(l=60, r=20,
                                                                                  t=50, b=50),
        )  # fmt: skip
        header = note(
            "<b>Capacity explorer.</b> Each expert takes at most C slots; the drop policy "
            "decides the order of its queue, and the slots past C are dropped: a dropped "
            "token's expert output is 0 and the token continues through the residual."
        )
        left = widgets.VBox(layout=column_layout(), children=[header, *c.values(), self.summary])
        children = [widgets.HBox([left, curve]), queues, self.table]
        super().__init__(children, controls=c, figures={"queues": queues, "drop_curve": curve})
        self._watch(self._update)
        self._timed("init", self._update)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def _curve(self, batch: str, formula: str, policy: str) -> tuple[list[float], list[float]]:
        """Drop rates (slots, tokens) at each cf of CURVE_CFS, cached per setting."""
        key = (batch, formula, policy)
        if key not in self._curves:
            expert_TK, gate_TK = self.routings[batch]
            T, K = expert_TK.shape
            slots, tokens = [], []
            for cf in CURVE_CFS:
                C = capacity_for(T, self.n_experts, K, formula, float(cf), self.min_capacity)
                keep_TK, _ = assign_slots(expert_TK, gate_TK, self.n_experts, C, policy,
                                          generator=self._generator())  # fmt: skip
                slots.append(drop_metric(expert_TK, gate_TK, keep_TK, "slots"))
                tokens.append(drop_metric(expert_TK, gate_TK, keep_TK, "tokens"))
            self._curves[key] = (slots, tokens)
        return self._curves[key]

    def _update(self) -> None:
        c = {name: w.value for name, w in self.controls.items()}
        self.controls["capacity_factor"].disabled = c["formula"] == "dropless"
        expert_TK, gate_TK = self.routings[c["batch"]]
        T, K = expert_TK.shape
        E = self.n_experts
        cf = c["capacity_factor"]
        self.capacity = capacity_for(T, E, K, c["formula"], cf, self.min_capacity)
        self.keep_TK, _ = assign_slots(expert_TK, gate_TK, E, self.capacity, c["policy"],
                                       generator=self._generator())  # fmt: skip
        # the queue order does not depend on C: the same policy without a limit gives each
        # slot its place in the queue, kept or not
        _, self.queue_TK = assign_slots(expert_TK, gate_TK, E, None, c["policy"],
                                        generator=self._generator())  # fmt: skip
        if c["renormalize"]:
            self.gate_after_TK = renormalize_survivors(gate_TK, self.keep_TK)
        else:
            self.gate_after_TK = gate_TK * self.keep_TK
        self.drop_rate = drop_metric(expert_TK, gate_TK, self.keep_TK, "slots")
        self._draw_queues(expert_TK, gate_TK)
        slots, tokens = self._curve(c["batch"], c["formula"], c["policy"])
        curve = self.figures["drop_curve"]
        lost_T = ~self.keep_TK.any(dim=1)
        with curve.batch_update():
            curve.data[0].update(x=CURVE_CFS, y=slots)
            curve.data[1].update(x=CURVE_CFS, y=tokens)
            curve.data[2].update(x=[cf], y=[self.drop_rate])
            curve.layout.xaxis.title.text = f"capacity factor cf ({FORMULAS[c['formula']]})"
        self._write_text(expert_TK, gate_TK, lost_T, c)

    def _draw_queues(self, expert_TK: torch.Tensor, gate_TK: torch.Tensor) -> None:
        E = self.n_experts
        e_N = expert_TK.reshape(-1).numpy()
        q_N = self.queue_TK.reshape(-1).numpy()
        keep_N = self.keep_TK.reshape(-1).numpy()
        L = int(q_N.max()) + 1 if q_N.size else 1
        T, K = expert_TK.shape
        t_N, k_N = np.divmod(np.arange(T * K), K)
        # colour codes: kept first choice e -> e, kept later choice -> E + e (paler),
        # dropped first choice -> 2E (dark grey), dropped later choice -> 2E + 1 (grey)
        later_N = k_N > 0
        z_EL = np.full((E, L), np.nan)
        z_EL[e_N, q_N] = np.where(keep_N, e_N + E * later_N, 2 * E + later_N)
        g_N = gate_TK.reshape(-1).numpy()
        after_N = self.gate_after_TK.reshape(-1).numpy()
        text_EL = np.full((E, L), "", dtype=object)
        text_EL[e_N, q_N] = [
            f"expert {e}, place {q}<br>token {t}, choice {k + 1}, gate {g:.3f}"
            f"<br>{'kept, gate now ' + format(a, '.3f') if kept else 'DROPPED'}"
            for e, q, t, k, g, a, kept in zip(e_N, q_N, t_N, k_N, g_N, after_N, keep_N)
        ]
        solid = expert_colours(E)
        colours = solid + [pale(c) for c in solid] + [DROPPED_EDGE, DROPPED_COLOUR]
        scale = []
        for i, colour in enumerate(colours):
            scale += [[i / len(colours), colour], [(i + 1) / len(colours), colour]]
        C = self.capacity
        fig = self.figures["queues"]
        with fig.batch_update():
            # empty cells as None (JSON null): NaN is not valid JSON for the widget's messages
            z = z_EL.astype(object)
            z[np.isnan(z_EL)] = None
            fig.data[0].update(z=z.tolist(), text=text_EL, colorscale=scale, zmin=-0.5,
                               zmax=len(colours) - 0.5)  # fmt: skip
            fig.data[1].update(x=q_N[~keep_N], y=e_N[~keep_N],
                               marker_size=float(np.clip(700 / L, 3, 9)))  # fmt: skip
            line_x = [] if C is None else [C - 0.5, C - 0.5]
            fig.data[2].update(x=line_x, y=[-0.5, E - 0.5] if line_x else [])
            fig.layout.height = 160 + 26 * E
            fig.layout.xaxis.range = [-0.5, max(L, (C or 0) + 1) - 0.5]
            shown = "no limit" if C is None else f"C = {C}"
            fig.layout.title.text = (
                f"Expert queues: {T * K} slots, {shown}<br><sup>solid: 1st choice · pale: "
                "later choice · grey with ×: dropped (dark: a 1st choice)</sup>"
            )

    def _write_text(self, expert_TK, gate_TK, lost_T, c) -> None:
        T, K = expert_TK.shape
        n_dropped = int((~self.keep_TK).sum())
        mass = drop_metric(expert_TK, gate_TK, self.keep_TK, "gate_mass")
        C = "no limit" if self.capacity is None else f"<b>{self.capacity}</b> slots per expert"
        self.summary.value = (
            f"<div style='line-height:1.6;margin-top:6px'>C = {C} "
            f"(T = {T}, E = {self.n_experts}, K = {K}, balanced load T·K/E = "
            f"{T * K / self.n_experts:g})<br>dropped <b>{n_dropped}</b> of {T * K} slots "
            f"(<b>{self.drop_rate:.1%}</b>) · {int(lost_T.sum())} tokens lost every expert · "
            f"{mass:.1%} of the gate weight</div>"
        )
        # the tokens that lost every expert first, then the rest in token order
        dropped = sorted(torch.nonzero(~self.keep_TK).tolist(), key=lambda tk: not lost_T[tk[0]])
        rows = []
        for t, k in dropped[:MAX_TABLE_ROWS]:
            before = ", ".join(f"{g:.2f}" for g in gate_TK[t].tolist())
            after = ", ".join(f"{g:.2f}" for g in self.gate_after_TK[t].tolist())
            cells = (t, k + 1, int(expert_TK[t, k]), int(self.queue_TK[t, k]), before, after,
                     "yes" if bool(lost_T[t]) else "")  # fmt: skip
            rows.append("<tr>" + "".join(f"<td {TABLE_CELL}>{v}</td>" for v in cells) + "</tr>")
        more = len(dropped) - MAX_TABLE_ROWS
        tail = f"<p>… and {more} more dropped slots</p>" if more > 0 else ""
        renorm = "renormalised" if c["renormalize"] else "not renormalised"
        titles = ("token", "choice", "expert", "place in queue", "gates before",
                  f"gates after ({html.escape(renorm)})", "lost every expert")  # fmt: skip
        # inline padding: JupyterLab's widget CSS resets cellpadding, and the headers ran together
        head = "<tr>" + "".join(f"<th {TABLE_CELL}>{h}</th>" for h in titles) + "</tr>"
        self.table.value = (
            "<details open><summary><b>Which tokens lost which slot</b></summary>"
            "<table style='font-size:0.85em;line-height:1.2;border-collapse:collapse'>"
            f"{head}{''.join(rows)}</table>{tail}</details>"
            if dropped
            else "<p><b>No slot dropped.</b></p>"
        )


def capacity_explorer(
    expert_TK: torch.Tensor | None = None,
    gate_TK: torch.Tensor | None = None,
    *,
    n_experts: int = 8,
    top_k: int = 2,
    seed: int = 0,
    n_tokens: int = 256,
    min_capacity: int = 0,
) -> CapacityExplorer:
    """An interactive capacity explorer (see the module docstring).

    Args:
        expert_TK, gate_TK: a routing to explore, (T, K) each, shown first as "yours"; the
            "balanced" and "skewed" batches of `minimoe.viz.batches` (same T, E, K) follow.
        n_experts: E.
        top_k: K of the default batches (ignored when expert_TK is given).
        seed: seeds the default batches and the "random" drop policy.
        n_tokens: T of the default batches (ignored when expert_TK is given).
        min_capacity: the lower bound on C passed to `minimoe.expert_capacity`.

    Returns:
        A `CapacityExplorer` (an ipywidgets VBox with `.controls`, `.figures`, `.last_update_ms`).
    """
    routings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if (expert_TK is None) != (gate_TK is None):
        raise ValueError("pass both expert_TK and gate_TK, or neither")
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    if expert_TK is not None:
        if expert_TK.dim() != 2 or tuple(expert_TK.shape) != tuple(gate_TK.shape):
            raise ValueError("expert_TK and gate_TK must both have shape (T, K)")
        if expert_TK.numel() and (expert_TK.min() < 0 or expert_TK.max() >= n_experts):
            raise ValueError(f"expert ids must be in [0, n_experts={n_experts})")
        n_tokens, top_k = expert_TK.shape
        routings["yours"] = (expert_TK.detach().cpu().long(), gate_TK.detach().cpu().float())
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
    if n_tokens < 1:
        raise ValueError(f"need at least one token, got T={n_tokens}")
    for name in ROUTING_BATCHES:
        routings[name] = routing_batch(name, n_tokens, n_experts, top_k, seed=seed)
    return CapacityExplorer(routings, n_experts=n_experts, seed=seed, min_capacity=min_capacity)
