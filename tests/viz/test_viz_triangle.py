"""The triangle figure's scores: the best of the set on the rim, the worst at INNER."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from minimoe.viz.triangle import INNER, corner_scores, plot_triangle

ROWS = [
    {"name": "a", "kind": "dense", "val_loss": 2.6, "tokens_per_s": 300.0, "memory_bytes": 3e5},
    {"name": "b", "kind": "moe", "val_loss": 2.5, "tokens_per_s": 100.0, "memory_bytes": 6e5},
    {"name": "c", "kind": "offloaded", "val_loss": 2.55, "tokens_per_s": 50.0, "memory_bytes": 4e5},
]


def test_scores_put_the_best_on_the_rim_and_the_worst_inside():
    s = corner_scores(ROWS)
    assert s.shape == (3, 3)
    np.testing.assert_allclose(s[:, 0], [INNER, 1.0, INNER + (1 - INNER) * 0.5])  # loss: lower
    np.testing.assert_allclose(s[:, 1], [1.0, INNER + (1 - INNER) * 0.2, INNER])  # speed: higher
    np.testing.assert_allclose(s[:, 2], [1.0, INNER, INNER + (1 - INNER) * 2 / 3])  # memory: lower


def test_scores_of_a_tie_are_all_best_and_empty_input_is_refused():
    tied = [dict(ROWS[0], name=n) for n in "xy"]
    np.testing.assert_allclose(corner_scores(tied), np.ones((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        corner_scores([])


def test_plot_draws_one_outline_and_one_marker_per_model():
    fig = plot_triangle(ROWS, title="t")
    tri, scatter = fig.axes
    labels = [line.get_label() for line in tri.get_lines()]
    assert [n for n in labels if not n.startswith("_")] == ["a", "b", "c"]
    assert len(scatter.collections) == 3
    assert scatter.get_xlabel().startswith("decode speed")
