"""The padded index lists of the grouped GEMM, as a picture: one square per row, blocks by expert.

`plot_padded_blocks(sorted_ids, expert_ids, n_slots, block_m, top_k)` draws the lists that
`minimoe.triton.align_block_size` returns: each square is one row of the grouped GEMM, coloured
by the expert of its block and labelled with its slot id s and token row t = s // K; padding rows
(the sentinel s = N) are pale and hatched, and a thick line separates the blocks. Labels are in
black or white, whichever reads better on the square (`text_colour`). It only draws.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from minimoe.viz._widgets import expert_colour, pale, text_colour


def plot_padded_blocks(
    sorted_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    n_slots: int,
    block_m: int,
    top_k: int,
    *,
    ax: Axes | None = None,
) -> Axes:
    """The grouped GEMM's rows, block by block.

    Args:
        sorted_ids: slot ids sorted by expert and padded per expert with `n_slots`, (P,).
        expert_ids: the expert of each block of `block_m` rows, (P // block_m,).
        n_slots: N = T*K, the padding sentinel.
        block_m: rows per block.
        top_k: K (a slot s belongs to token s // K).
        ax: where to draw (default: a new figure).

    Returns:
        The Axes: one Rectangle per row first (in row order), then the block separators.
    """
    sorted_ids, expert_ids = sorted_ids.detach().cpu().long(), expert_ids.detach().cpu().long()
    if block_m < 1 or top_k < 1:
        raise ValueError(f"block_m and top_k must be >= 1, got {block_m} and {top_k}")
    if sorted_ids.dim() != 1 or len(sorted_ids) != block_m * len(expert_ids):
        raise ValueError(f"sorted_ids must hold block_m * len(expert_ids) = "
                         f"{block_m * len(expert_ids)} rows, got {tuple(sorted_ids.shape)}")  # fmt: skip
    if len(sorted_ids) and (sorted_ids.min() < 0 or sorted_ids.max() > n_slots):
        raise ValueError(f"slot ids must be in [0, {n_slots}] ({n_slots} = padding)")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(sorted_ids)), 1.9), layout="constrained")
    for i, slot in enumerate(sorted_ids.tolist()):
        e = int(expert_ids[i // block_m])
        pad = slot == n_slots
        face = pale(expert_colour(e), 0.7) if pad else expert_colour(e)
        ax.add_patch(Rectangle((i, 0), 1, 1, facecolor=face, edgecolor="black", lw=0.6,
                               hatch="///" if pad else None))  # fmt: skip
        label = "pad" if pad else f"s{slot}\nt{slot // top_k}"
        ax.text(i + 0.5, 0.5, label, ha="center", va="center", fontsize=8,
                color=text_colour(face),
                bbox={"facecolor": face, "edgecolor": "none", "pad": 1} if pad else None)  # fmt: skip
    for b in range(len(expert_ids) + 1):
        ax.axvline(block_m * b, color="black", lw=2.5)
    for b, e in enumerate(expert_ids.tolist()):
        ax.text(block_m * b + block_m / 2, 1.15, f"block {b}: expert {e}", ha="center",
                fontsize=9, color="black")  # fmt: skip
        ax.add_patch(Rectangle((block_m * b + 0.15, 1.32), block_m - 0.3, 0.08,
                               color=expert_colour(e)))  # fmt: skip
    ax.set_xlim(0, max(len(sorted_ids), 1))
    ax.set_ylim(0, 1.45)
    ax.axis("off")
    return ax
