"""Which slots each drop policy keeps, on one small routing: one row of slots per policy.

A slot is one (token, k) pair: token t's k-th choice. `plot_drop_policies` draws, for each
policy, a grid with one column per token and one row per choice (the first choice on top): a
kept slot in its expert's colour with its label in black or white, whichever reads better on
that colour (`text_colour`); a dropped slot grey, hatched only in its lower part so that its label
sits on plain grey. The masks come from `minimoe.assign_slots`; this module only draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from minimoe.capacity import assign_slots
from minimoe.config import DROP_POLICIES
from minimoe.viz._widgets import DROPPED_COLOUR, DROPPED_EDGE, expert_colours, text_colour
from minimoe.viz.static import _check_routing

LABEL_FONT_SIZE = 8


def _draw_slot(ax, t: int, row: int, label: str, colour: str | None) -> None:
    """One slot at column t, row `row` (0 = bottom); colour None means dropped."""
    face = DROPPED_COLOUR if colour is None else colour
    ax.add_patch(Rectangle((t, row), 0.94, 0.9, facecolor=face, edgecolor=DROPPED_EDGE, lw=0.6))
    if colour is None:  # hatch the bottom third only: the label stays on plain grey
        ax.add_patch(Rectangle((t, row), 0.94, 0.3, fill=False, edgecolor=DROPPED_EDGE,
                               hatch="///", lw=0))  # fmt: skip
    ax.text(t + 0.47, row + 0.6, label, ha="center", va="center", fontsize=LABEL_FONT_SIZE,
            color=text_colour(face))  # fmt: skip


def plot_drop_policies(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    n_experts: int,
    capacity: int,
    policies: Sequence[str] = DROP_POLICIES,
    *,
    seed: int = 0,
) -> tuple[Figure, dict[str, torch.Tensor]]:
    """For each drop policy, which slots of a small routing survive a capacity C.

    Args:
        expert_TK: chosen experts, (T, K); T up to 32 so that the labels fit.
        gate_TK: their gate weights, (T, K).
        n_experts: E.
        capacity: C, slots per expert.
        policies: the drop policies to compare, one row of the figure each.
        seed: the seed of the `random` policy's generator (the same for every call).

    Returns:
        (figure, keep masks): the masks, bool (T, K) per policy, are what the figure shows.
    """
    expert_TK = _check_routing(expert_TK, n_experts)
    T, K = expert_TK.shape
    if tuple(gate_TK.shape) != (T, K):
        raise ValueError(f"gate_TK {tuple(gate_TK.shape)} must match expert_TK's ({T}, {K})")
    if not 1 <= T <= 32:
        raise ValueError(f"plot_drop_policies draws 1 to 32 tokens, got {T}")
    if not policies:
        raise ValueError("policies must name at least one drop policy")
    colours = expert_colours(n_experts)
    fig, axes = plt.subplots(len(policies), 1, figsize=(max(6.0, 0.8 * T), 1.35 * len(policies)),
                             layout="constrained", squeeze=False)  # fmt: skip
    keeps = {}
    for ax, policy in zip(axes[:, 0], policies, strict=True):
        gen = torch.Generator().manual_seed(seed)
        keep_TK, _ = assign_slots(expert_TK, gate_TK, n_experts, capacity, policy, generator=gen)
        keeps[policy] = keep_TK
        for t in range(T):
            for k in range(K):
                e, kept = int(expert_TK[t, k]), bool(keep_TK[t, k])
                label = f"e{e} {float(gate_TK[t, k]):.2f}"
                _draw_slot(ax, t, K - 1 - k, label, colours[e] if kept else None)
        lost = int((~keep_TK.any(1)).sum())
        first = int((~keep_TK[:, 0]).sum())
        ax.set(xlim=(0, T), ylim=(0, K), xticks=[t + 0.47 for t in range(T)],
               xticklabels=[f"t{t}" for t in range(T)],
               yticks=[K - 1 - k + 0.45 for k in range(K)],
               yticklabels=["1st", "2nd", "3rd"][:K] + [f"{k + 1}th" for k in range(3, K)])  # fmt: skip
        ax.set_title(f"{policy}: first choices dropped {first}, tokens that lost every slot {lost}",
                     fontsize=9, loc="left")  # fmt: skip
        ax.tick_params(length=0)
        ax.spines[:].set_visible(False)
    handles = [Patch(facecolor=colours[e], edgecolor=DROPPED_EDGE, label=f"expert {e}")
               for e in range(n_experts)]  # fmt: skip
    handles.append(Patch(facecolor=DROPPED_COLOUR, edgecolor=DROPPED_EDGE, hatch="///",
                         label="dropped"))  # fmt: skip
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig, keeps
