"""Figures of chapter 05 (vectorised MoE): the dispatch/combine grid, the sort by expert, and an
explorer of the rows each implementation multiplies.

- `plot_dispatch_combine`: the GShard `(T, E, C)` tensors drawn as a T x (E*C) grid, one block
  of C columns per expert, a placed slot filled in its expert's colour with its gate written in.
- `plot_sorted_slots`: the T*K slots in token order, then the kept ones sorted by expert
  (`minimoe.sort_slots`), so the contiguous run of each expert can be seen.
- `padding_explorer()`: skew of the router, capacity factor, T, E, K against the rows of the
  experts' matmuls: useful, padding (multiplied and thrown away) and dropped (never computed),
  per implementation, from `padding_waste`.

Every number is computed by the library (`minimoe.route`, `minimoe.expert_capacity`); this
module only counts rows and draws.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from minimoe.capacity import expert_capacity
from minimoe.routing import route
from minimoe.viz._widgets import (
    DROPPED_COLOUR,
    DROPPED_EDGE,
    Explorer,
    LiveFigure,
    column_layout,
    control_layout,
    expert_colour,
    expert_colours,
    note,
    text_colour,
)

LABEL_FONT_SIZE = 8
USEFUL_COLOUR = "#4D4D4D"  # dark grey: no expert has it (the load chart colours experts)
PADDING_COLOUR = "#E69F00"  # Okabe-Ito orange: rows multiplied for nothing
IMPLS = ("loop", "einsum", "padded_bmm", "grouped_mm")


def _check_slots(expert_TK: torch.Tensor, keep_TK: torch.Tensor, n_experts: int) -> None:
    if expert_TK.dim() != 2 or keep_TK.shape != expert_TK.shape:
        raise ValueError(
            f"expert_TK and keep_TK must be (T, K) of one shape, got {tuple(expert_TK.shape)} "
            f"and {tuple(keep_TK.shape)}"
        )
    if expert_TK.numel() and not 0 <= int(expert_TK.min()) <= int(expert_TK.max()) < n_experts:
        raise ValueError(
            f"expert ids must be in [0, {n_experts}), got {expert_TK.unique().tolist()}"
        )


def plot_dispatch_combine(
    dispatch_TEC: torch.Tensor,
    combine_TEC: torch.Tensor,
    expert_TK: torch.Tensor,
    keep_TK: torch.Tensor,
    ax: Axes | None = None,
) -> Axes:
    """Dispatch (a filled place) and combine (the gate written in it) as a T x (E*C) grid.

    A token's dropped slots are named at the right of its row.
    """
    if dispatch_TEC.dim() != 3 or combine_TEC.shape != dispatch_TEC.shape:
        raise ValueError("dispatch_TEC and combine_TEC must be (T, E, C) of one shape")
    T, E, C = dispatch_TEC.shape
    _check_slots(expert_TK, keep_TK, E)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.4 * E * C + 1.6, 0.9 + 0.35 * T))
    for t, e, c in dispatch_TEC.nonzero().tolist():
        colour = expert_colour(e)
        ax.add_patch(plt.Rectangle((e * C + c - 0.5, t - 0.5), 1, 1, color=colour, lw=0))
        ax.text(e * C + c, t, f"{float(combine_TEC[t, e, c]):.2f}", ha="center", va="center",
                fontsize=LABEL_FONT_SIZE, color=text_colour(colour))  # fmt: skip
    for t, k in (~keep_TK).nonzero().tolist():
        ax.text(E * C - 0.3, t, f" dropped: expert {int(expert_TK[t, k])}", va="center",
                fontsize=LABEL_FONT_SIZE, color="#B22222")  # fmt: skip
    for c in range(1, E * C):
        ax.axvline(c - 0.5, color="k" if c % C == 0 else "0.85", lw=1 if c % C == 0 else 0.5)
    for t in range(1, T):
        ax.axhline(t - 0.5, color="0.85", lw=0.5)
    ax.set_xticks([e * C + (C - 1) / 2 for e in range(E)],
                  [f"expert {e}\n(c = 0..{C - 1})" for e in range(E)])  # fmt: skip
    ax.set_yticks(range(T), [f"token {t}" for t in range(T)])
    ax.set_xlim(-0.5, E * C + 3)
    ax.set_ylim(T - 0.5, -0.5)
    ax.set_title("dispatch (a filled place) and combine (the gate in it)")
    return ax


def plot_sorted_slots(
    expert_TK: torch.Tensor,
    keep_TK: torch.Tensor,
    order_M: torch.Tensor,
    counts_E: torch.Tensor,
    n_experts: int,
    axes=None,
):
    """The N = T*K slots in token order (s = t*K + k), then the M kept ones sorted by expert.

    Each slot is a box in its expert's colour labelled t (token) and k (choice); dropped slots
    are grey and hatched. Under the sorted row, each expert's contiguous run is named.
    Returns the two Axes.
    """
    _check_slots(expert_TK, keep_TK, n_experts)
    T, K = expert_TK.shape
    N = T * K
    if order_M.dim() != 1 or order_M.numel() > N:
        raise ValueError(f"order_M must be 1-D with at most T*K = {N} slot ids")
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(max(4.0, 0.5 * N), 2.6))
    expert_N, keep_N = expert_TK.flatten().tolist(), keep_TK.flatten().tolist()
    rows = ((axes[0], list(range(N)), "the N = T·K slots in token order (s = t·K + k)"),
            (axes[1], order_M.tolist(), "the kept slots sorted by expert (stable): order_M"))  # fmt: skip
    for ax, slots, title in rows:
        for i, s in enumerate(slots):
            colour = expert_colour(expert_N[s]) if keep_N[s] else DROPPED_COLOUR
            ax.add_patch(plt.Rectangle((i, 0), 0.95, 1, facecolor=colour,
                                       edgecolor=DROPPED_EDGE if not keep_N[s] else colour,
                                       hatch=None if keep_N[s] else "//", lw=0.8))  # fmt: skip
            label = f"t{s // K}\nk{s % K}" if keep_N[s] else f"t{s // K}\nk{s % K}\n(drop)"
            ax.text(i + 0.47, 0.5, label, ha="center", va="center", fontsize=LABEL_FONT_SIZE,
                    color=text_colour(colour),
                    bbox=None if keep_N[s] else dict(facecolor=DROPPED_COLOUR, lw=0, pad=0.5))  # fmt: skip
        ax.set(xlim=(0, N), ylim=(0, 1))
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    end = 0
    for e, n in enumerate(counts_E.tolist()):
        if n:
            axes[1].text(end + n / 2, -0.3, f"expert {e}", ha="center", fontsize=LABEL_FONT_SIZE,
                         color="black")  # fmt: skip
            axes[1].plot([end + 0.05, end + n - 0.1], [-0.08, -0.08], color=expert_colour(e), lw=3,
                         clip_on=False)  # fmt: skip
        end += n
    return axes


def padding_waste(expert_TK: torch.Tensor, n_experts: int, capacity: int) -> dict[str, dict]:
    """Rows of the experts' matmuls per implementation, for one routing.

    The loop and the grouped matmul multiply exactly the routed rows; the padded batched matmul
    pads every expert to the busiest one's count (E * max_count rows, dropless); the einsum
    fills (E, C, D) buffers of `capacity` rows each: the slots past C are dropped and the empty
    places are padding.

    Args:
        expert_TK: the chosen experts, (T, K).
        n_experts: E.
        capacity: the einsum's C (>= 0).

    Returns:
        impl -> {"useful", "padding", "dropped", "rows"} (rows = useful + padding, the rows
        multiplied), for "loop", "einsum", "padded_bmm" and "grouped_mm".
    """
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    _check_slots(expert_TK, torch.ones_like(expert_TK, dtype=torch.bool), n_experts)
    counts_E = torch.bincount(expert_TK.flatten(), minlength=n_experts)
    N = int(counts_E.sum())
    kept = int(counts_E.clamp(max=capacity).sum())
    max_count = int(counts_E.max()) if counts_E.numel() else 0
    rows = {
        "loop": (N, 0, 0),
        "einsum": (kept, n_experts * capacity - kept, N - kept),
        "padded_bmm": (N, n_experts * max_count - N, 0),
        "grouped_mm": (N, 0, 0),
    }
    return {impl: {"useful": u, "padding": p, "dropped": d, "rows": u + p}
            for impl, (u, p, d) in rows.items()}  # fmt: skip


def skewed_logits(n_tokens: int, n_experts: int, skew: float, seed: int = 0) -> torch.Tensor:
    """Random logits plus a Zipf prior: log p_e = -skew * ln(e + 1) (skew 0 = a random router)."""
    gen = torch.Generator().manual_seed(seed)
    prior_E = -skew * torch.log(torch.arange(1, n_experts + 1, dtype=torch.float32))
    return torch.randn(n_tokens, n_experts, generator=gen) + prior_E


class PaddingExplorer(Explorer):
    """The widget `padding_explorer` returns (see the module docstring).

    Attributes beyond `Explorer`'s: `waste` (the last `padding_waste`), `counts_E` (the load),
    `capacity` (the einsum's C).
    """

    def __init__(self, *, n_tokens: int, n_experts: int, top_k: int, seed: int) -> None:
        self.seed = seed
        layout = control_layout("12em")
        c = {
            "skew": widgets.FloatSlider(0.3, min=0.0, max=3.0, step=0.1,
                                        description="router skew s", **layout),
            "capacity_factor": widgets.FloatSlider(1.25, min=0.25, max=4.0, step=0.05,
                                                   description="capacity factor cf",
                                                   **layout),
            "n_tokens": widgets.SelectionSlider(options=[64, 256, 1024, 4096], value=n_tokens,
                                                description="tokens T", **layout),
            "n_experts": widgets.SelectionSlider(options=[4, 8, 16, 32, 64], value=n_experts,
                                                 description="experts E", **layout),
            "top_k": widgets.IntSlider(top_k, min=1, max=8, description="top-k K", **layout),
        }  # fmt: skip
        rows = LiveFigure()
        for name, colour, pattern in (("useful rows", USEFUL_COLOUR, ""),
                                      ("padding rows (multiplied, thrown away)", PADDING_COLOUR, ""),
                                      ("dropped slots (never computed)", DROPPED_COLOUR, "/")):  # fmt: skip
            rows.add_bar(y=list(IMPLS), x=[0] * len(IMPLS), orientation="h", name=name,
                         marker=dict(color=colour, pattern_shape=pattern,
                                     line=dict(color="#444444", width=0.5)),
                         hovertemplate="%{y}: %{x} " + name.split(" (")[0] + "<extra></extra>")  # fmt: skip
        rows.update_layout(barmode="stack", template="plotly_white", height=300, width=540,
                           xaxis_title="rows of the experts' matmuls (slots)",
                           yaxis=dict(autorange="reversed"), modebar_orientation="v",
                           legend=dict(orientation="h", y=-0.3, traceorder="normal"), margin=dict(l=100, r=20, t=50, b=40))  # fmt: skip
        load = LiveFigure()
        load.add_bar(x=[], y=[], name="slots", marker=dict(line=dict(color="black", width=0.5)),
                     hovertemplate="expert %{x}: %{y} slots<extra></extra>")  # fmt: skip
        for name, colour, dash in (("capacity C (einsum)", "#B22222", "dash"),
                                   ("max count (padded bmm)", PADDING_COLOUR, "dot"),
                                   ("mean T·K/E", "#555555", "dot")):  # fmt: skip
            load.add_scatter(
                x=[], y=[], mode="lines", name=name, line=dict(color=colour, dash=dash, width=2)
            )
        load.update_layout(template="plotly_white", height=260, width=540, xaxis_title="expert",
                           yaxis_title="slots", modebar_orientation="v", title="Slots per expert",
                           legend=dict(orientation="h", y=-0.3, traceorder="normal"), margin=dict(l=60, r=20, t=40, b=40))  # fmt: skip
        self.summary = widgets.HTML()
        header = note(
            "<b>Padding and waste.</b> The same routing through each implementation: the loop and "
            "the grouped matmul multiply only the routed rows; the padded batched matmul pads every "
            "expert to the busiest one; the einsum gives every expert C rows, drops what does not "
            "fit and pads the rest. Raise the skew to make one expert hot."
        )
        left = widgets.VBox([header, *c.values(), self.summary], layout=column_layout())
        super().__init__([widgets.HBox([left, widgets.VBox([rows, load])])], controls=c,
                         figures={"rows": rows, "load": load})  # fmt: skip
        self._watch(self._update)
        self._timed("init", self._update)

    def _update(self) -> None:
        c = {name: w.value for name, w in self.controls.items()}
        T, E = c["n_tokens"], c["n_experts"]
        self._hold = True  # K can never exceed E
        self.controls["top_k"].max = E
        self._hold = False
        K = self.controls["top_k"].value
        logits_TE = skewed_logits(T, E, c["skew"], self.seed)
        expert_TK = route(logits_TE, K, "mixtral").expert_TK
        self.capacity = expert_capacity(T, E, K, "megatron", capacity_factor=c["capacity_factor"])
        self.waste = w = padding_waste(expert_TK, E, self.capacity)
        self.counts_E = counts = torch.bincount(expert_TK.flatten(), minlength=E)
        rows, load = self.figures["rows"], self.figures["load"]
        with rows.batch_update():
            for i, part in enumerate(("useful", "padding", "dropped")):
                rows.data[i].x = [w[impl][part] for impl in IMPLS]
            rows.layout.title.text = f"T·K = {T * K} routed slots, E = {E}, C = {self.capacity}"
        with load.batch_update():
            load.data[0].update(x=np.arange(E), y=counts.numpy(), marker_color=expert_colours(E))
            for trace, y in zip(load.data[1:], (self.capacity, int(counts.max()), T * K / E)):
                trace.update(x=[-0.5, E - 0.5], y=[y, y])
        pad = w["padded_bmm"]
        ein = w["einsum"]
        self.summary.value = (
            "<div style='line-height:1.6'>padded bmm: <b>"
            f"{pad['padding'] / max(pad['rows'], 1):.0%}</b> of its {pad['rows']} rows are padding"
            f" (max count {int(counts.max())} vs mean {T * K / E:.0f}) · einsum: <b>"
            f"{ein['padding'] / max(ein['rows'], 1):.0%}</b> padding, <b>{ein['dropped']}</b> "
            f"slots dropped ({ein['dropped'] / max(T * K, 1):.1%}) · loop and grouped mm: "
            "no padding, nothing dropped</div>"
        )


def padding_explorer(
    n_tokens: int = 1024, n_experts: int = 16, top_k: int = 2, seed: int = 0
) -> PaddingExplorer:
    """An interactive explorer of padding and drops per implementation (see the module docstring).

    Args:
        n_tokens: the starting T (one of 64, 256, 1024, 4096).
        n_experts: the starting E (one of 4, 8, 16, 32, 64).
        top_k: the starting K (1 to min(8, E)).
        seed: seeds the random logits.
    """
    if n_tokens not in (64, 256, 1024, 4096):
        raise ValueError(f"n_tokens must be one of 64, 256, 1024, 4096, got {n_tokens}")
    if n_experts not in (4, 8, 16, 32, 64):
        raise ValueError(f"n_experts must be one of 4, 8, 16, 32, 64, got {n_experts}")
    if not 1 <= top_k <= min(8, n_experts):
        raise ValueError(f"top_k must be in [1, {min(8, n_experts)}], got {top_k}")
    return PaddingExplorer(n_tokens=n_tokens, n_experts=n_experts, top_k=top_k, seed=seed)


__all__ = [
    "PaddingExplorer",
    "padding_explorer",
    "padding_waste",
    "plot_dispatch_combine",
    "plot_sorted_slots",
    "skewed_logits",
]
