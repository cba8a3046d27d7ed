"""Static figures (matplotlib) of chapter 08's routers: Soft MoE's two weightings, and the future
leaking into the past.

- `plot_soft_moe_weights`: the dispatch weights (each slot's softmax over the tokens) and the
  combine weights (each token's softmax over all E·C slots) of Soft MoE (Puigcerver et al. 2023,
  arXiv 2308.00951, eqs. 1-3), token x slot, the slots grouped by expert in its colour;
- `output_change`: change only the tokens at positions >= t and record how much the output at
  each position moves (the profile behind `minimoe.zoo.measure_causality`, which keeps only the
  largest change before t);
- `plot_output_change`: that profile for several routers, one row each: a bar before the cut
  is the future leaking into the past.

Each plotting function takes `ax`/`axes=None` (a new figure) and returns what it drew on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

from minimoe.viz._widgets import DROPPED_COLOUR, expert_colours

LEAK_COLOUR = "#D55E00"  # vermillion: the change that must not happen
ALLOWED_COLOUR = DROPPED_COLOUR  # grey: positions whose own input changed
ROUNDING = 1e-9  # a change below this fraction of the largest change counts as none


def plot_soft_moe_weights(dispatch_TEC: torch.Tensor, combine_TEC: torch.Tensor, axes=None):
    """Dispatch and combine weights side by side, tokens down, slots (e, c) across.

    Args:
        dispatch_TEC: each column (slot) sums to 1 over the tokens.
        combine_TEC: each row (token) sums to 1 over all E·C slots.
        axes: two Axes to draw on, or None for a new figure.

    Returns:
        The two Axes.
    """
    for name, w in (("dispatch_TEC", dispatch_TEC), ("combine_TEC", combine_TEC)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3:
            raise ValueError(f"{name} must be a (T, E, C) tensor, got {w!r:.60}")
    if dispatch_TEC.shape != combine_TEC.shape:
        raise ValueError(
            f"dispatch_TEC {tuple(dispatch_TEC.shape)} and combine_TEC "
            f"{tuple(combine_TEC.shape)} must have the same shape"
        )
    T, E, C = dispatch_TEC.shape
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 0.6 + 0.22 * max(T, 8)), layout="constrained")
    colours = expert_colours(E)
    titles = (
        "dispatch: each slot's input is a weighted average\nof the tokens (columns sum to 1)",
        "combine: each token's output is a weighted average\nof the slots (rows sum to 1)",
    )
    for ax, w, title in zip(axes, (dispatch_TEC, combine_TEC), titles):
        w_TN = w.detach().double().reshape(T, E * C).numpy()
        im = ax.imshow(w_TN, cmap="Blues", vmin=0, vmax=max(float(w_TN.max()), 1e-12),
                       aspect="auto", interpolation="nearest")  # fmt: skip
        for e in range(E):  # each expert's slots under a band of its colour
            ax.add_patch(plt.Rectangle((e * C - 0.5, -1.6), C, 1.0, color=colours[e],
                                       clip_on=False))  # fmt: skip
            if e:
                ax.axvline(e * C - 0.5, color="white", lw=2)
        ax.set_ylim(T - 0.5, -1.7)
        ax.set_xticks(range(E * C), [f"{e}.{c}" for e in range(E) for c in range(C)],
                      fontsize=8)  # fmt: skip
        ax.set_xlabel("slot (expert.slot), the band: the expert's colour")
        ax.set_ylabel("token")
        ax.set_title(title, fontsize=10)
        plt.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return axes


def output_change(
    fn: Callable[[torch.Tensor], torch.Tensor], x_BSD: torch.Tensor, cut: int, seed: int = 0
) -> np.ndarray:
    """How much each position's output moves when only the positions >= `cut` change.

    The tokens at positions >= cut of every sequence are replaced by Gaussian noise of x's
    standard deviation (as `minimoe.zoo.measure_causality` does), and the change of the output
    is reduced to one number per position: max over the batch and the features of |Δy|.

    Args:
        fn: x_BSD -> y_BS... (a tensor, or a tuple whose first element is the output).
        x_BSD: the input, (B, S, D), float.
        cut: the first position that changes (1 <= cut < S).
        seed: seeds the replacement tokens.

    Returns:
        change_S, float64 numpy: positions < cut should read exactly 0 for a causal fn.
    """
    if not isinstance(x_BSD, torch.Tensor) or x_BSD.dim() != 3 or not x_BSD.is_floating_point():
        raise ValueError(f"x_BSD must be a float (B, S, D) tensor, got {x_BSD!r:.60}")
    S = x_BSD.shape[1]
    if not isinstance(cut, int) or not 1 <= cut < S:
        raise ValueError(f"cut must be an int in [1, S={S}), got {cut!r}")
    gen = torch.Generator().manual_seed(seed)
    x2 = x_BSD.clone()
    noise = torch.randn(x2[:, cut:].shape, generator=gen, dtype=torch.float64)
    x2[:, cut:] = (noise * float(x_BSD.double().std())).to(x_BSD.dtype)

    def out(x):
        y = fn(x)
        return (y[0] if isinstance(y, (tuple, list)) else y).detach().double()

    with torch.no_grad():
        delta = (out(x2) - out(x_BSD)).abs()
    return delta.reshape(delta.shape[0], S, -1).amax(dim=(0, 2)).numpy()


def plot_output_change(changes: Mapping[str, np.ndarray], cut: int, axes=None):
    """One row per router: the change of the output at each position when only the positions
    >= cut changed. Bars before the cut (vermillion) are the leak; after it (grey), the positions
    whose own input changed.

    Args:
        changes: router name -> change_S (from `output_change`, the same cut).
        cut: the first changed position.
        axes: one Axes per router, or None for a new figure.

    Returns:
        The Axes, one per router.
    """
    if not changes:
        raise ValueError("changes is empty: pass at least one router's change_S")
    n = len(changes)
    if axes is None:
        _, axes = plt.subplots(n, 1, figsize=(10, 0.4 + 1.25 * n), sharex=True,
                               layout="constrained")  # fmt: skip
        axes = np.atleast_1d(axes)
    for ax, (name, change_S) in zip(axes, changes.items()):
        change_S = np.asarray(change_S, dtype=np.float64)
        S = len(change_S)
        if not 1 <= cut < S:
            raise ValueError(f"cut must be in [1, S={S}) for {name!r}, got {cut}")
        pos = np.arange(S)
        before = pos < cut
        ax.bar(pos[before], change_S[before], color=LEAK_COLOUR, width=0.8)
        ax.bar(pos[~before], change_S[~before], color=ALLOWED_COLOUR, width=0.8)
        ax.axvline(cut - 0.5, color="black", lw=1.2, ls="--")
        leak = float(change_S[before].max())
        # float rounding of a reordered sum may move a causal output by ~1e-16 of its size
        causal = leak <= ROUNDING * max(float(change_S.max()), 1e-300)
        verdict = (
            "causal: nothing before the cut moved"
            if causal
            else f"leaks: max |Δy| before the cut {leak:.2g}"
        )
        ax.set_title(f"{name}: {verdict}", fontsize=10, loc="left")
        ax.set_ylabel("max |Δy|", fontsize=9)
        ax.set_ylim(0, max(float(change_S.max()), 1e-12) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel(f"position (tokens at positions ≥ {cut} were replaced)")
    axes[0].legend(
        handles=[Patch(color=LEAK_COLOUR, label="before the cut: must stay 0 in a decoder"),
                 Patch(color=ALLOWED_COLOUR, label="from the cut on: their input changed")],
        loc="upper left", fontsize=8, framealpha=0.9,
    )  # fmt: skip
    return axes


__all__ = ["output_change", "plot_output_change", "plot_soft_moe_weights"]
