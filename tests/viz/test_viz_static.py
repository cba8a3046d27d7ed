"""The static figures draw what the library computes: values read back from the Axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from minimoe import assign_slots, expert_capacity, route  # noqa: E402
from minimoe.testing import assert_close  # noqa: E402
from minimoe.viz._widgets import DROPPED_COLOUR, expert_colour  # noqa: E402
from minimoe.viz.batches import routing_batch  # noqa: E402
from minimoe.viz.drops import drop_curve, drop_metric  # noqa: E402
from minimoe.viz.static import (  # noqa: E402
    plot_drop_rate_vs_capacity,
    plot_expert_load,
    plot_load_over_steps,
    plot_routing_heatmap,
)

# 4 tokens, K=2, E=3: expert 0 is chosen 4 times, expert 1 three times, expert 2 once
EXPERT_TK = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 0]])
GATE_TK = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _routing(T=12, E=5, K=2, seed=0):
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(seed))
    return route(logits, K, "mixtral")


def _line(ax, prefix):
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    assert len(lines) == 1, [ln.get_label() for ln in ax.get_lines()]
    return lines[0]


def test_heatmap_shows_the_probabilities_and_marks_each_choice():
    r = _routing(T=12, E=5, K=2)
    ax = plot_routing_heatmap(r.probs_TE, r.expert_TK)
    image = ax.get_images()[0]
    assert_close(torch.tensor(np.asarray(image.get_array())), r.probs_TE.T.double(), name="z")
    marks = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(marks) == 2  # one per rank
    for k, mark in enumerate(marks):
        xy = mark.get_offsets()
        assert np.array_equal(xy[:, 0], np.arange(12))
        assert np.array_equal(xy[:, 1], r.expert_TK[:, k].numpy())
        faces = [to_hex(c).upper() for c in mark.get_facecolors()]
        assert faces == [expert_colour(int(e)) for e in r.expert_TK[:, k]]
    assert marks[0].get_sizes()[0] > marks[1].get_sizes()[0]  # 1st choice drawn larger


def test_heatmap_max_tokens_and_labels():
    r = _routing(T=30, E=4, K=1)
    tokens = [f"t<{i}>" for i in range(30)]
    ax = plot_routing_heatmap(r.probs_TE, r.expert_TK, tokens=tokens, max_tokens=8)
    assert np.asarray(ax.get_images()[0].get_array()).shape == (4, 8)
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens[:8]
    assert "first 8 of 30" in ax.get_title()


def test_heatmap_rejects_bad_input():
    r = _routing(T=6, E=4, K=2)
    with pytest.raises(ValueError, match="tokens but expert_TK has"):
        plot_routing_heatmap(r.probs_TE[:5], r.expert_TK)
    with pytest.raises(ValueError, match="expert ids"):
        plot_routing_heatmap(r.probs_TE, r.expert_TK + 4)
    with pytest.raises(ValueError, match="token labels"):
        plot_routing_heatmap(r.probs_TE, r.expert_TK, tokens=["a"])


def test_expert_load_stacks_kept_and_dropped_with_the_capacity_line():
    # C = 2 under "position": expert 0 keeps tokens 0 and 1, drops 2 and 3; expert 1 keeps 2 of 3
    keep_TK, _ = assign_slots(EXPERT_TK, GATE_TK, 3, 2, "position")
    ax = plot_expert_load(EXPERT_TK, 3, keep_TK=keep_TK, capacity=2)
    kept, dropped = ax.containers[0], ax.containers[1]
    assert [b.get_height() for b in kept] == [2, 2, 1]
    assert [b.get_height() for b in dropped] == [2, 1, 0]
    assert [b.get_y() for b in dropped] == [2, 2, 1]  # stacked on the kept slots
    assert [to_hex(b.get_facecolor()).upper() for b in kept] == [expert_colour(e) for e in range(3)]
    assert to_hex(dropped[0].get_facecolor()).upper() == DROPPED_COLOUR
    assert _line(ax, "capacity").get_ydata()[0] == 2
    assert _line(ax, "balanced").get_ydata()[0] == pytest.approx(8 / 3)
    assert "37.5% of slots dropped" in ax.get_title()
    assert "dropped" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_expert_load_without_a_mask_has_no_dropped_legend_entry():
    ax = plot_expert_load(EXPERT_TK, 3)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "dropped" not in labels and "kept (expert colour)" in labels
    assert [b.get_height() for b in ax.containers[1]] == [0, 0, 0]


def test_expert_load_edge_cases():
    ax = plot_expert_load(torch.zeros(0, 2, dtype=torch.long), 4)  # T = 0
    assert [b.get_height() for b in ax.containers[0]] == [0, 0, 0, 0]
    ax = plot_expert_load(torch.zeros(5, 1, dtype=torch.long), 3)  # all on one expert
    assert [b.get_height() for b in ax.containers[0]] == [5, 0, 0]
    with pytest.raises(ValueError, match="keep_TK"):
        plot_expert_load(EXPERT_TK, 3, keep_TK=torch.ones(4, 1, dtype=torch.bool))


def test_drop_metric_hand_computed():
    # C = 1, "position": kept t0k0 (expert 0), t0k1 (expert 1), t3k0 (expert 2); 5 of 8 dropped
    keep_TK, _ = assign_slots(EXPERT_TK, GATE_TK, 3, 1, "position")
    assert keep_TK.tolist() == [[True, True], [False, False], [False, False], [True, False]]
    assert drop_metric(EXPERT_TK, GATE_TK, keep_TK, "slots") == 5 / 8
    assert drop_metric(EXPERT_TK, GATE_TK, keep_TK, "first_choice") == 2 / 4
    assert drop_metric(EXPERT_TK, GATE_TK, keep_TK, "tokens") == 2 / 4
    assert drop_metric(EXPERT_TK, GATE_TK, keep_TK, "gate_mass") == pytest.approx(2.2 / 4)


def test_drop_curve_matches_assign_slots_and_falls_to_zero():
    expert_TK, gate_TK = routing_batch("skewed", 64, 8, 2, seed=1)
    cfs = [0.5, 1.0, 1.5, 4.0]
    curve = drop_curve(expert_TK, gate_TK, 8, cfs, "position", "deepspeed")
    for cf, y in zip(cfs, curve):
        C = expert_capacity(64, 8, 2, "deepspeed", cf)
        keep_TK, _ = assign_slots(expert_TK, gate_TK, 8, C, "position")
        assert y == pytest.approx(1 - keep_TK.float().mean().item())
    assert curve == sorted(curve, reverse=True) and curve[0] > 0
    assert curve[-1] == 0  # cf = E/K: C >= T, nothing can overflow


def test_drop_rate_plot_one_line_per_routing_for_slots():
    routings = {n: routing_batch(n, 64, 8, 2) for n in ("balanced", "skewed")}
    cfs = [0.5, 1.0, 2.0]
    ax = plot_drop_rate_vs_capacity(routings=routings, n_experts=8, capacity_factors=cfs)
    balanced, skewed = _line(ax, "balanced"), _line(ax, "skewed")
    assert list(skewed.get_xdata()) == cfs
    assert list(skewed.get_ydata()) == drop_curve(*routings["skewed"], 8, cfs)
    assert skewed.get_ydata()[1] > balanced.get_ydata()[1]  # a skewed router drops more
    assert ax.get_xlabel().startswith("capacity factor")


def test_drop_rate_plot_one_line_per_policy_for_other_metrics():
    expert_TK, gate_TK = routing_batch("skewed", 64, 8, 2)
    policies = ("position", "k_major", "probs")
    ax = plot_drop_rate_vs_capacity(expert_TK, gate_TK, 8, capacity_factors=[0.5, 1.0],
                                    policies=policies, metric="first_choice")  # fmt: skip
    lines = {ln.get_label(): ln.get_ydata() for ln in ax.get_lines() if ":" in ln.get_label()}
    assert sorted(lines) == sorted(f"routing: {p}" for p in policies)
    # k-major serves every first choice before any second one: it drops fewer first choices
    assert lines["routing: k_major"][1] < lines["routing: position"][1]


def test_drop_rate_plot_rejects_bad_input():
    e, g = routing_batch("balanced", 16, 4, 2)
    with pytest.raises(ValueError, match="routings"):
        plot_drop_rate_vs_capacity(n_experts=4)
    with pytest.raises(ValueError, match="n_experts"):
        plot_drop_rate_vs_capacity(e, g)
    with pytest.raises(ValueError, match="does not use a capacity factor"):
        plot_drop_rate_vs_capacity(e, g, 4, formula="dropless")
    with pytest.raises(ValueError, match="policy"):
        plot_drop_rate_vs_capacity(e, g, 4, policies=["lifo"])
    with pytest.raises(ValueError, match="metric"):
        plot_drop_rate_vs_capacity(e, g, 4, metric="bytes")


def test_load_over_steps_area_and_lines():
    load_SE = torch.tensor([[4.0, 4.0, 0.0], [6.0, 1.0, 1.0], [8.0, 0.0, 0.0]])
    ax = plot_load_over_steps(load_SE)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3
    assert [to_hex(b.get_facecolor()[0]).upper() for b in bands] == [
        expert_colour(e) for e in range(3)
    ]
    ax = plot_load_over_steps(load_SE, kind="lines", steps=[0, 10, 20])
    expert_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("expert")]
    assert len(expert_lines) == 3
    assert list(expert_lines[0].get_xdata()) == [0, 10, 20]
    assert list(expert_lines[0].get_ydata()) == [0.5, 0.75, 1.0]  # shares, not counts
    assert _line(ax, "balanced").get_ydata()[0] == pytest.approx(1 / 3)


def test_load_over_steps_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        plot_load_over_steps(torch.ones(4))
    with pytest.raises(ValueError, match="kind"):
        plot_load_over_steps(torch.ones(2, 2), kind="pie")
    with pytest.raises(ValueError, match="steps"):
        plot_load_over_steps(torch.ones(2, 2), steps=[1, 2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        plot_load_over_steps(-torch.ones(2, 2))


def test_plots_draw_on_a_given_axes():
    fig, axes = plt.subplots(1, 2)
    r = _routing()
    assert plot_routing_heatmap(r.probs_TE, r.expert_TK, ax=axes[0]) is axes[0]
    assert plot_expert_load(r.expert_TK, 5, ax=axes[1]) is axes[1]
