"""The picture of chapter 01: a Transformer block with a dense FFN, and the same block with an MoE
layer in its place (router, experts, combine).

`plot_moe_block()` draws both side by side with matplotlib; nothing is computed. The MoE side
shows one token: the router scores the E experts, the top K run (in their course colours), the
others stay grey and cost nothing, and their outputs are combined with the gate weights.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from minimoe.viz._widgets import EMPTY_COLOUR, expert_colour, text_colour

BOX = "#E8EEF4"  # attention, norms: the parts a dense and an MoE block share
EDGE = "#333333"


def _box(ax, x, y, w, h, text, face=BOX, size=9, edge=EDGE, lw=1.0, weight="normal"):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                facecolor=face, edgecolor=edge, lw=lw))  # fmt: skip
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=text_colour(face),
            weight=weight)  # fmt: skip


def _arrow(ax, start, end, colour=EDGE, lw=1.2):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=colour,
                                 lw=lw, shrinkA=0, shrinkB=0))  # fmt: skip


def _block(ax, x, ffn_top, title):
    """The shared part of a pre-norm block, bottom to top; returns the FFN's slot (y bottom)."""
    ax.text(x, 11.0, title, ha="center", va="center", fontsize=11, weight="bold")
    _arrow(ax, (x, 0.0), (x, 0.6))
    ax.text(x, -0.25, "token x", ha="center", va="top", fontsize=9)
    _box(ax, x, 1.0, 1.8, 0.6, "RMSNorm")
    _arrow(ax, (x, 1.3), (x, 1.75))
    _box(ax, x, 2.2, 1.8, 0.8, "attention")
    _arrow(ax, (x, 2.6), (x, 3.05))
    _box(ax, x, 3.3, 0.5, 0.5, "+")
    _arrow(ax, (x, 3.55), (x, 3.95))
    _box(ax, x, 4.3, 1.8, 0.6, "RMSNorm")
    _arrow(ax, (x, 4.6), (x, 5.0))
    # the residual paths around attention and around the FFN / MoE layer
    for y0, y1 in ((0.3, 3.3), (3.6, ffn_top + 0.65)):
        ax.plot([x, x - 1.45, x - 1.45], [y0, y0, y1], color="#777777", lw=1)
        _arrow(ax, (x - 1.45, y1), (x - 0.25, y1), colour="#777777", lw=1)
    _box(ax, x, ffn_top + 0.65, 0.5, 0.5, "+")
    _arrow(ax, (x, ffn_top + 0.9), (x, ffn_top + 1.35))
    ax.text(x, ffn_top + 1.45, "to the next block", ha="center", va="bottom", fontsize=9)


def plot_moe_block(n_experts: int = 8, chosen: tuple[int, ...] = (2, 5)) -> Figure:
    """A dense Transformer block beside an MoE block, for one token.

    Args:
        n_experts: E, the experts drawn (2 to 16).
        chosen: the experts the token is routed to (its top K), drawn in their colours.

    Returns:
        The matplotlib Figure.
    """
    if not 2 <= n_experts <= 16:
        raise ValueError(f"n_experts must be in [2, 16] to be drawn, got {n_experts}")
    if not chosen or any(not 0 <= e < n_experts for e in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"chosen must be distinct experts in [0, {n_experts}), got {chosen}")
    fig, ax = plt.subplots(figsize=(11, 6.2), layout="constrained")
    ax.set(xlim=(-0.2, 12.6), ylim=(-0.9, 11.4))
    ax.axis("off")
    # left: the dense block
    _block(ax, 2.0, 7.3, "a dense Transformer block")
    _box(ax, 2.0, 6.1, 1.8, 1.8, "FFN\nW₂ act(W₁x)\n\nevery token,\nall weights", face="#D5E3F0")
    _arrow(ax, (2.0, 7.0), (2.0, 7.7))
    # right: the MoE block, its layer drawn wide in place of the FFN
    x = 5.9
    _block(ax, x, 8.6, "the same block with an MoE layer")
    ax.add_patch(FancyBboxPatch((x - 0.75, 4.95), 12.35 - (x - 0.75), 3.5, boxstyle="round,pad=0.02",
                                facecolor="white", edgecolor=EDGE, lw=1.2, ls="--"))  # fmt: skip
    ax.text(x - 0.6, 8.35, "MoE layer", fontsize=10, weight="bold", va="top")
    _arrow(ax, (x, 5.0), (x, 5.35))
    _box(ax, x + 0.2, 5.65, 1.3, 0.55, "router\nsoftmax(W_r x)", size=8)
    ax.text(x + 0.95, 5.65, "top-K", fontsize=8, va="center")
    span = 4.6 / n_experts
    gates = {e: g for e, g in zip(chosen, ("g₁", "g₂", "g₃", "g₄"))}
    for e in range(n_experts):
        ex = x + 1.55 + span * (e + 0.5)
        on = e in chosen
        face = expert_colour(e) if on else EMPTY_COLOUR
        _box(ax, ex, 6.55, span * 0.8, 0.75, f"E{e}", face=face, size=8,
             edge=EDGE if on else "#AAAAAA", weight="bold" if on else "normal")  # fmt: skip
        if on:
            _arrow(ax, (x + 1.35, 5.65), (ex, 6.17), colour=expert_colour(e))
            _arrow(ax, (ex, 6.93), (x + 3.9, 7.53), colour=expert_colour(e))
            ax.text(ex + 0.12, 7.1, gates[e], fontsize=8, color=EDGE)
    _box(ax, x + 3.9, 7.78, 2.6, 0.45, "combine: Σ gₖ · expertₖ(x)", size=8)
    ax.plot([x + 2.6, x], [7.78, 7.78], color=EDGE, lw=1.2)
    _arrow(ax, (x, 7.78), (x, 9.0))
    ax.text(x + 3.7, 4.78, f"E = {n_experts} experts stored, K = {len(chosen)} run for this token "
            "(grey: skipped, no compute)", ha="center", va="top", fontsize=8.5, color="#444444")  # fmt: skip
    return fig
