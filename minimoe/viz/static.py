"""Static figures (matplotlib) of routing, load and drops: for reading, and for exported notebooks.

- `plot_routing_heatmap`: router probabilities, token x expert, the chosen experts marked;
- `plot_expert_load`: slots per expert, kept and dropped stacked, with the capacity line;
- `plot_drop_rate_vs_capacity`: what a capacity factor costs, per drop policy or per router;
- `plot_load_over_steps`: each expert's share of the slots over training steps.

Every number drawn is computed by the library (`minimoe.assign_slots`, `expert_capacity`,
`routing_stats`); these functions only draw. Experts keep their colours from
`minimoe.viz._widgets.expert_colour` in every figure. Each function takes `ax=None` (a new
figure) and returns the Axes it drew on.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from minimoe.config import DROP_POLICIES
from minimoe.metrics import routing_stats
from minimoe.viz._widgets import DROPPED_COLOUR, DROPPED_EDGE, expert_colours
from minimoe.viz.drops import DROP_METRICS, drop_curve

RANK_MARKERS = ("o", "D", "s", "^", "v", "P", "X", "*")  # 1st, 2nd, ... choice
DEFAULT_CAPACITY_FACTORS = tuple(np.round(np.arange(0.25, 2.51, 0.125), 3))


def _new_ax(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def _check_routing(expert_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
    if not isinstance(expert_TK, torch.Tensor) or expert_TK.dim() != 2:
        raise ValueError(f"expert_TK must be a 2-D tensor (tokens, K), got {expert_TK!r:.60}")
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    if expert_TK.numel() and (expert_TK.min() < 0 or expert_TK.max() >= n_experts):
        raise ValueError(f"expert ids must be in [0, {n_experts}), got {expert_TK.unique()[:8]}")
    return expert_TK.detach().cpu().long()


def plot_routing_heatmap(
    probs_TE: torch.Tensor,
    expert_TK: torch.Tensor,
    *,
    tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    max_tokens: int = 64,
    title: str | None = None,
) -> Axes:
    """Router probabilities as an expert x token heatmap, each token's chosen experts marked.

    Tokens run along x (the first `max_tokens`), experts along y. A chosen expert gets a marker in
    its colour: a circle for the first choice, a diamond for the second, then a square, ...

    Args:
        probs_TE: router probabilities (or DeepSeek-V3 scores), (T, E).
        expert_TK: chosen experts, best first, (T, K).
        tokens: token labels for the x axis (default: their indices).
        ax: where to draw (default: a new figure).
        max_tokens: show at most this many tokens.
        title: the Axes title.

    Returns:
        The Axes.
    """
    if not isinstance(probs_TE, torch.Tensor) or probs_TE.dim() != 2:
        raise ValueError("probs_TE must be a 2-D tensor (tokens, experts)")
    T, E = probs_TE.shape
    expert_TK = _check_routing(expert_TK, E)
    if expert_TK.shape[0] != T:
        raise ValueError(f"probs_TE has {T} tokens but expert_TK has {expert_TK.shape[0]}")
    if tokens is not None and len(tokens) != T:
        raise ValueError(f"got {len(tokens)} token labels for {T} tokens")
    n = min(T, max_tokens)
    probs = probs_TE[:n].detach().float().cpu().numpy()
    ax = _new_ax(ax, (min(3 + 0.22 * n, 16), 1.2 + 0.32 * E))
    vmax = float(probs.max()) if probs.size else 1.0
    image = ax.imshow(probs.T, aspect="auto", cmap="Greys", vmin=0.0, vmax=max(vmax, 1e-6))
    colours = expert_colours(E)
    K = expert_TK.shape[1]
    handles = []
    for k in range(K):
        e_n = expert_TK[:n, k].numpy()
        marker = RANK_MARKERS[min(k, len(RANK_MARKERS) - 1)]
        size = max(70 - 18 * k, 16)
        ax.scatter(np.arange(n), e_n, s=size, marker=marker, c=[colours[e] for e in e_n],
                   edgecolors="black", linewidths=0.8, zorder=3)  # fmt: skip
        ordinal = {0: "1st", 1: "2nd", 2: "3rd"}.get(k, f"{k + 1}th")
        handles.append(Line2D([], [], ls="", marker=marker, mfc="white", mec="black",
                              label=f"{ordinal} choice"))  # fmt: skip
    ax.set_yticks(range(E))
    ax.set_ylabel("expert")
    if tokens is not None and n:
        ax.set_xticks(range(n), [repr(t)[1:-1] for t in tokens[:n]], rotation=90, fontsize=8)
        ax.set_xlabel("token")
    else:
        ax.set_xlabel("token index")
    shown = f" (first {n} of {T} tokens)" if n < T else ""
    ax.set_title(title or f"Router probabilities and chosen experts{shown}")
    ax.figure.colorbar(image, ax=ax, label="router probability", pad=0.01, fraction=0.04)
    if K:
        ax.legend(handles=handles[: min(K, 3)], loc="upper left", bbox_to_anchor=(0, -0.12),
                  ncol=3, frameon=False, fontsize=8)  # fmt: skip
    return ax


def plot_expert_load(
    expert_TK: torch.Tensor,
    n_experts: int,
    *,
    keep_TK: torch.Tensor | None = None,
    capacity: int | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Slots routed to each expert: kept (the expert's colour) and dropped (grey, hatched),
    stacked, with the capacity C and the perfectly balanced load T*K/E as lines.

    Args:
        expert_TK: chosen experts, (T, K).
        n_experts: E.
        keep_TK: surviving slots, bool (T, K) (default: all kept).
        capacity: C, drawn as a dashed line (None: no line).
        ax: where to draw.
        title: the Axes title.

    Returns:
        The Axes; its first container holds the kept bars, the second the dropped bars.
    """
    expert_TK = _check_routing(expert_TK, n_experts)
    if keep_TK is not None and tuple(keep_TK.shape) != tuple(expert_TK.shape):
        raise ValueError(f"keep_TK {tuple(keep_TK.shape)} must match expert_TK's shape")
    stats = routing_stats(expert_TK, n_experts, keep_TK=None if keep_TK is None else keep_TK.cpu())
    kept_E = stats.load_E.numpy()
    dropped_E = (stats.routed_E - stats.load_E).numpy()
    ax = _new_ax(ax, (min(4.5 + 0.45 * n_experts, 18), 3.4))
    x_E = np.arange(n_experts)
    ax.bar(x_E, kept_E, color=expert_colours(n_experts), edgecolor="black", linewidth=0.5,
           label="kept")  # fmt: skip
    ax.bar(x_E, dropped_E, bottom=kept_E, color=DROPPED_COLOUR, edgecolor=DROPPED_EDGE,
           hatch="///", linewidth=0.5, label="dropped")  # fmt: skip
    T, K = expert_TK.shape
    if T:
        ax.axhline(T * K / n_experts, color="#555555", ls=":", lw=1.2,
                   label=f"balanced T·K/E = {T * K / n_experts:g}")  # fmt: skip
    if capacity is not None:
        ax.axhline(capacity, color="black", ls="--", lw=1.5, label=f"capacity C = {capacity}")
    ax.set_xticks(x_E)
    ax.set_xlabel("expert")
    ax.set_ylabel("slots")
    drop = f", {stats.drop_rate:.1%} of slots dropped" if keep_TK is not None else ""
    ax.set_title(title or f"Load per expert ({T * K} slots{drop})")
    handles = [Patch(facecolor="white", edgecolor="black", label="kept (expert colour)")]
    if keep_TK is not None:  # without a capacity mask nothing is dropped: no "dropped" entry
        handles.append(Patch(facecolor=DROPPED_COLOUR, edgecolor=DROPPED_EDGE, hatch="///",
                             label="dropped"))  # fmt: skip
    handles += [h for h in ax.get_legend_handles_labels()[0] if isinstance(h, Line2D)]
    # beside the bars, not over them: a tall bar is the one a reader wants to see
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0, frameon=False)  # fmt: skip
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_drop_rate_vs_capacity(
    expert_TK: torch.Tensor | None = None,
    gate_TK: torch.Tensor | None = None,
    n_experts: int | None = None,
    *,
    routings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS,
    policies: Sequence[str] = DROP_POLICIES,
    formula: str = "deepspeed",
    metric: str = "slots",
    min_capacity: int = 0,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Drop rate against the capacity factor: one line per drop policy, for each routing.

    Every policy keeps min(load, C) slots per expert, so the fraction of *slots* dropped
    (metric="slots") is the same for all of them, and then one line per routing is drawn. The
    policies differ in *which* slots go: metric="first_choice", "gate_mass" or "tokens" shows
    that (see `drop_metric`).

    Args:
        expert_TK, gate_TK: one routing, (T, K); or pass `routings` instead.
        n_experts: E.
        routings: name -> (expert_TK, gate_TK), e.g. {"balanced": ..., "skewed": ...}.
        capacity_factors: the x values.
        policies: drop policies to compare (see `minimoe.capacity`).
        formula: the capacity formula ("deepspeed", "megatron" or "tutel").
        metric: what "drop rate" counts (see `drop_metric`).
        min_capacity: lower bound on C.
        ax: where to draw.
        title: the Axes title.

    Returns:
        The Axes, one Line2D per (routing, policy) drawn, labelled "routing: policy".
    """
    if routings is None:
        if expert_TK is None or gate_TK is None:
            raise ValueError("pass expert_TK and gate_TK, or routings={name: (expert, gate)}")
        routings = {"routing": (expert_TK, gate_TK)}
    if n_experts is None:
        raise ValueError("n_experts is required")
    if metric not in DROP_METRICS:
        raise ValueError(f"metric={metric!r} is not one of {DROP_METRICS}")
    for p in policies:
        if p not in DROP_POLICIES:
            raise ValueError(f"policy {p!r} is not one of {DROP_POLICIES}")
    shown = list(policies[:1]) if metric == "slots" else list(policies)
    ax = _new_ax(ax, (6.4, 3.8))
    styles = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
    markers = ("o", "s", "^", "D", "v")
    cfs = [float(c) for c in capacity_factors]
    for r, (name, (e_TK, g_TK)) in enumerate(routings.items()):
        e_TK = _check_routing(e_TK, n_experts)
        for i, policy in enumerate(shown):
            # one routing: a colour per policy; several: a colour per routing, a style per policy
            colour = expert_colours(max(len(routings), len(shown)))[r if len(routings) > 1 else i]
            y = drop_curve(e_TK, g_TK.detach().cpu(), n_experts, cfs, policy, formula,
                           metric=metric, min_capacity=min_capacity)  # fmt: skip
            label = f"{name}: {'every policy' if metric == 'slots' else policy}"
            ax.plot(cfs, y, color=colour, ls=styles[i % len(styles)], lw=1.8,
                    marker=markers[i % len(markers)], ms=3.5, label=label)  # fmt: skip
    K = next(iter(routings.values()))[0].shape[1]
    if min(cfs) <= n_experts / K <= max(cfs):
        ax.axvline(n_experts / K, color="#777777", lw=0.8, ls=":")
        ax.text(n_experts / K, 0.98, " cf = E/K: never drops", transform=ax.get_xaxis_transform(),
                va="top", fontsize=8, color="#555555")  # fmt: skip
    ax.set_xlim(min(cfs), max(cfs))
    ax.set_ylim(bottom=0)
    what = {"slots": "slots dropped", "first_choice": "first choices dropped",
            "gate_mass": "gate weight dropped", "tokens": "tokens with no expert left"}[metric]  # fmt: skip
    ax.set_xlabel(f"capacity factor cf ({formula} formula)")
    ax.set_ylabel(f"fraction of {what}")
    ax.set_title(title or f"Drop rate vs capacity factor ({what})")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def load_shares(load_SE: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each step's load as shares of that step's slots, (S, E) float64 (a step with no slots: 0)."""
    load = np.asarray(
        load_SE.detach().cpu() if isinstance(load_SE, torch.Tensor) else load_SE, dtype=np.float64
    )
    if load.ndim != 2:
        raise ValueError(f"load_SE must be 2-D (steps, experts), got shape {load.shape}")
    if (load < 0).any():
        raise ValueError("loads must be >= 0")
    total = load.sum(1, keepdims=True)
    return np.divide(load, total, out=np.zeros_like(load), where=total > 0)


def plot_load_over_steps(
    load_SE: torch.Tensor | np.ndarray,
    *,
    steps: Sequence[float] | None = None,
    kind: str = "area",
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Each expert's share of the slots over training steps.

    Args:
        load_SE: slots per expert at each recorded step, (S, E) (counts or shares).
        steps: the step numbers (default 0 .. S-1).
        kind: "area" (stacked shares: even bands = balanced, one band = collapse) or "lines".
        ax: where to draw.
        title: the Axes title.

    Returns:
        The Axes (kind="area": one PolyCollection per expert; "lines": one Line2D per expert).
    """
    share = load_shares(load_SE)
    if kind not in ("area", "lines"):
        raise ValueError(f"kind={kind!r} is not 'area' or 'lines'")
    S, E = share.shape
    x = np.arange(S) if steps is None else np.asarray(steps, dtype=np.float64)
    if len(x) != S:
        raise ValueError(f"got {len(x)} steps for {S} rows of load_SE")
    ax = _new_ax(ax, (7.0, 3.6))
    colours = expert_colours(E)
    labels = [f"expert {e}" for e in range(E)]
    if kind == "area":
        ax.stackplot(x, share.T, colors=colours, labels=labels, edgecolor="white", linewidth=0.3)
        ax.set_ylim(0, 1)
        for level in np.arange(1, E) / E:
            ax.axhline(level, color="white", lw=0.6, ls=":", alpha=0.8)
    else:
        for e in range(E):
            ax.plot(x, share[:, e], color=colours[e], lw=1.6, label=labels[e])
        ax.axhline(1 / E, color="#555555", ls=":", lw=1.2, label="balanced 1/E")
        ax.set_ylim(bottom=0)
    if S > 1:
        ax.set_xlim(x[0], x[-1])
    ax.set_xlabel("training step")
    ax.set_ylabel("share of routed slots")
    ax.set_title(title or "Load per expert over training")
    handles, labels = ax.get_legend_handles_labels()
    if kind == "area":  # the legend lists the bands top to bottom, as they are stacked
        handles, labels = handles[::-1], labels[::-1]
    ax.legend(handles, labels, fontsize=7, ncol=max(1, (E + 15) // 16), loc="upper left",
              bbox_to_anchor=(1.01, 1), frameon=False)  # fmt: skip
    ax.spines[["top", "right"]].set_visible(False)
    return ax
