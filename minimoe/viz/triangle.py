"""The cost-accuracy-performance triangle of chapter 10, drawn from `minimoe.serving.triangle`.

Left, the triangle itself: one axis per corner (accuracy = validation loss, performance = decode
bytes per CPU-second, cost = memory held), each model a triangle. Each axis is scaled within the set
of models compared: the best of them on that axis sits on the rim (1), the worst at
`INNER` (0.2), linearly between; a model that had all three would fill the outer triangle. The
scale is relative, so the right panel draws the same numbers in their units: loss against speed,
each marker's area proportional to the memory it needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from minimoe.viz._widgets import expert_colours

__all__ = ["INNER", "corner_scores", "plot_triangle"]

INNER = 0.2  # where the worst model of the set sits on each axis
CORNERS = ("accuracy\n(val loss)", "performance\n(decode bytes/CPU-s)", "cost\n(memory held)")
MARKERS = {"dense": "s", "moe": "o", "offloaded": "D"}


def _get(row, name: str):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def _scale(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.ones_like(values)
    good = (values - lo) / (hi - lo)
    return INNER + (1 - INNER) * (good if higher_is_better else 1 - good)


def corner_scores(rows: Sequence) -> np.ndarray:
    """Each model's three scores (accuracy, performance, cost), as `plot_triangle` draws them.

    Args:
        rows: `TriangleRow`s or their dicts (val_loss, tokens_per_s, memory_bytes).

    Returns:
        An array (len(rows), 3) in [INNER, 1]; 1 = the best of the set on that axis.
    """
    if len(rows) == 0:
        raise ValueError("rows must not be empty")
    loss = np.array([_get(r, "val_loss") for r in rows], dtype=float)
    speed = np.array([_get(r, "tokens_per_s") for r in rows], dtype=float)
    memory = np.array([_get(r, "memory_bytes") for r in rows], dtype=float)
    return np.stack([_scale(loss, False), _scale(speed, True), _scale(memory, False)], axis=1)


def plot_triangle(rows: Sequence, *, title: str | None = None) -> Figure:
    """The triangle (left) and loss against speed with memory as marker area (right).

    Args:
        rows: `TriangleRow`s or their dicts.
        title: the figure's title (default: none).

    Returns:
        The figure.
    """
    scores = corner_scores(rows)
    colours = expert_colours(len(rows))
    fig = plt.figure(figsize=(13.0, 6.6), layout="constrained")
    tri = fig.add_subplot(1, 2, 1)
    angle = np.pi / 2 + np.arange(3) * 2 * np.pi / 3  # accuracy at the top, then counter-clockwise
    unit = np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (3, 2): each corner's direction

    def outline(radii: np.ndarray) -> np.ndarray:
        points = unit * radii[:, None]
        return np.vstack([points, points[:1]])

    for level in (INNER, 0.6, 1.0):  # the scale: worst, middle, best
        ring = outline(np.full(3, level))
        tri.plot(ring[:, 0], ring[:, 1], color="#BBBBBB", lw=0.8 if level < 1 else 1.4, zorder=0)
    for d in unit:
        tri.plot([0, d[0]], [0, d[1]], color="#DDDDDD", lw=0.8, zorder=0)
    for row, score, colour in zip(rows, scores, colours, strict=True):
        shape = outline(score)
        style = "--" if _get(row, "kind") == "offloaded" else "-"
        tri.plot(shape[:, 0], shape[:, 1], style, color=colour, lw=2.2, label=_get(row, "name"))
        tri.fill(shape[:, 0], shape[:, 1], color=colour, alpha=0.07)
    for d, label, va in zip(unit, CORNERS, ("bottom", "top", "top"), strict=True):
        tri.text(1.08 * d[0], 1.08 * d[1], label, ha="center", va=va, fontsize=12)
    tri.set_aspect("equal")
    tri.set_xlim(-1.25, 1.25)
    tri.set_ylim(-0.75, 1.32)
    tri.axis("off")
    tri.set_title("each corner: the best of the set at the outer triangle, the worst inside",
                  fontsize=11)  # fmt: skip
    tri.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=10, ncol=2, frameon=False)

    ax = fig.add_subplot(1, 2, 2)
    memory = np.array([_get(r, "memory_bytes") for r in rows], dtype=float)
    area = 60 + 900 * memory / memory.max()
    for row, colour, a in zip(rows, colours, area, strict=True):
        ax.scatter(_get(row, "tokens_per_s"), _get(row, "val_loss"), s=a, color=colour,
                   marker=MARKERS.get(_get(row, "kind"), "o"), alpha=0.85, edgecolor="#222222",
                   label=f"{_get(row, 'name')}: {_get(row, 'memory_bytes') / 1e3:.0f} KB")  # fmt: skip
    ax.set_xlabel("decode speed, new bytes per CPU-second (batch 1, this CPU) → better")
    ax.set_ylabel("validation loss, nats/byte (lower is better)")
    ax.set_title("the same numbers in their units (marker area ∝ memory held)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    ax.legend(fontsize=9.5, loc="best", markerscale=0.5, labelspacing=1.0)
    if title:
        fig.suptitle(title)
    return fig
