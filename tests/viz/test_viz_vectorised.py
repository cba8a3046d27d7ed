"""minimoe.viz.vectorised: the rows each implementation multiplies, the padding explorer's
callback, and the two static figures of chapter 05."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minimoe import assign_slots, dispatch_combine_tensors, expert_capacity, sort_slots  # noqa: E402
from minimoe.viz._widgets import DROPPED_COLOUR, expert_colour  # noqa: E402
from minimoe.viz.vectorised import (  # noqa: E402
    padding_explorer,
    padding_waste,
    plot_dispatch_combine,
    plot_sorted_slots,
)


def test_padding_waste_by_hand():
    # E = 3, loads 4, 1, 1 (T = 3, K = 2); C = 2
    expert_TK = torch.tensor([[0, 1], [0, 2], [0, 0]])
    w = padding_waste(expert_TK, 3, capacity=2)
    assert w["loop"] == w["grouped_mm"] == {"useful": 6, "padding": 0, "dropped": 0, "rows": 6}
    # padded to the busiest expert: 3 experts x 4 rows, 6 of them routed
    assert w["padded_bmm"] == {"useful": 6, "padding": 6, "dropped": 0, "rows": 12}
    # C = 2: expert 0 keeps 2 of 4, experts 1 and 2 keep 1 each and leave 1 place empty
    assert w["einsum"] == {"useful": 4, "padding": 2, "dropped": 2, "rows": 6}
    with pytest.raises(ValueError):
        padding_waste(expert_TK, 3, capacity=-1)
    with pytest.raises(ValueError):
        padding_waste(expert_TK, 2, capacity=2)  # expert 2 does not exist


def test_padding_explorer_shows_the_library_counts():
    w = padding_explorer(n_tokens=256, n_experts=8, top_k=2)
    rows = w.figures["rows"]
    T, K, E = 256, 2, 8
    assert w.capacity == expert_capacity(T, E, K, "megatron", capacity_factor=1.25)
    for i, part in enumerate(("useful", "padding", "dropped")):
        assert list(rows.data[i].x) == [w.waste[impl][part] for impl in rows.data[i].y]
    assert int(w.counts_E.sum()) == T * K
    assert list(w.figures["load"].data[0].y) == w.counts_E.tolist()
    assert w.waste["padded_bmm"]["rows"] == E * int(w.counts_E.max())


def test_skew_raises_the_padding_and_capacity_lowers_the_drops():
    w = padding_explorer(n_tokens=1024, n_experts=16, top_k=2)
    w.controls["skew"].value = 0.0
    even = dict(w.waste["padded_bmm"])
    w.controls["skew"].value = 2.0
    hot = dict(w.waste["padded_bmm"])
    assert hot["padding"] > 2 * even["padding"]
    dropped_low_cf = w.waste["einsum"]["dropped"]
    w.controls["capacity_factor"].value = 4.0
    assert w.waste["einsum"]["dropped"] < dropped_low_cf
    assert w.waste["einsum"]["padding"] > 0
    assert "padding" in w.summary.value
    assert w.update_ms["capacity_factor"]  # every update is timed


def test_padding_explorer_clamps_k_and_rejects_bad_starts():
    w = padding_explorer(n_experts=8, top_k=8)
    w.controls["n_experts"].value = 4
    assert w.controls["top_k"].value <= 4
    assert int(w.counts_E.sum()) == w.controls["n_tokens"].value * w.controls["top_k"].value
    for bad in (dict(n_tokens=100), dict(n_experts=5), dict(top_k=0), dict(n_experts=4, top_k=5)):
        with pytest.raises(ValueError):
            padding_explorer(**bad)


def _example():
    g = torch.Generator().manual_seed(0)
    T, E, K = 8, 4, 2
    expert_TK = torch.rand(T, E, generator=g).argsort(-1)[:, :K]
    expert_TK[:5, 0] = 1  # expert 1 overflows C = 4
    gate_TK = torch.rand(T, K, generator=g).softmax(-1)
    C = 4
    keep_TK, position_TK = assign_slots(expert_TK, gate_TK, E, C, "position")
    return expert_TK, gate_TK, keep_TK, position_TK, E, C


def test_dispatch_figure_colours_each_place_by_its_expert():
    expert_TK, gate_TK, keep_TK, position_TK, E, C = _example()
    d, c = dispatch_combine_tensors(expert_TK, gate_TK, keep_TK, E, C, position_TK=position_TK)
    ax = plot_dispatch_combine(d, c, expert_TK, keep_TK)
    filled = [p for p in ax.patches]
    assert len(filled) == int(keep_TK.sum())
    colours = {matplotlib.colors.to_hex(p.get_facecolor()) for p in filled}
    assert colours <= {expert_colour(e).lower() for e in range(E)}
    assert sum("dropped" in t.get_text() for t in ax.texts) == int((~keep_TK).sum())
    plt.close("all")


def test_sorted_slots_figure():
    expert_TK, _, keep_TK, _, E, _ = _example()
    order_M, counts_E, _, _ = sort_slots(expert_TK, keep_TK, E)
    top, bottom = plot_sorted_slots(expert_TK, keep_TK, order_M, counts_E, E)
    assert len(top.patches) == expert_TK.numel() and len(bottom.patches) == order_M.numel()
    grey = matplotlib.colors.to_hex(DROPPED_COLOUR).lower()
    assert sum(matplotlib.colors.to_hex(p.get_facecolor()) == grey for p in top.patches) == int(
        (~keep_TK).sum()
    )
    sorted_experts = expert_TK.flatten()[order_M].tolist()
    drawn = [matplotlib.colors.to_hex(p.get_facecolor()) for p in bottom.patches]
    assert drawn == [expert_colour(e).lower() for e in sorted_experts]
    with pytest.raises(ValueError):
        plot_sorted_slots(expert_TK, keep_TK[:1], order_M, counts_E, E)
    plt.close("all")
