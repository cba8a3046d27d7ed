"""minimoe.viz.parallelism: the layouts of chapter 09, the traffic explorer's callback and the cost
model's numbers."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minimoe.distributed import expert_ranks, traffic_matrix  # noqa: E402
from minimoe.viz._widgets import expert_colour  # noqa: E402
from minimoe.viz.parallelism import (  # noqa: E402
    H100_BF16_FLOPS,
    IB_NDR_BYTES_S,
    NVLINK4_BYTES_S,
    a2a_cost,
    plot_a2a_cost,
    plot_parallelism_layouts,
    plot_traffic_matrix,
    rank_routing,
    traffic_explorer,
)


def _facecolours(ax):
    return [matplotlib.colors.to_hex(p.get_facecolor()).upper() for p in ax.patches]


def test_layouts_place_each_expert_where_the_library_does():
    axes = plot_parallelism_layouts(n_experts=8, world_size=4, ep_size=2)
    data, expert, edp, tensor = (_facecolours(ax) for ax in axes)
    colours = [expert_colour(e).upper() for e in range(8)]
    assert all(data.count(c) == 4 for c in colours)  # every rank holds every expert
    assert all(expert.count(c) == 1 for c in colours)  # each expert once
    assert all(edp.count(c) == 2 for c in colours)  # each expert on W / EP = 2 ranks
    assert all(tensor.count(c) == 4 for c in colours)  # a slice of each expert on each rank
    titles = [ax.get_title(loc="left") for ax in axes]
    assert "all-to-all" in titles[1] and "all-reduce" in titles[3]
    plt.close("all")


def test_layouts_refuse_bad_sizes():
    for bad in (dict(world_size=5), dict(n_experts=6), dict(ep_size=4), dict(ep_size=3)):
        with pytest.raises(ValueError):
            plot_parallelism_layouts(**bad)


def test_traffic_matrix_plot_writes_every_count():
    count_WW = torch.tensor([[5, 1, 0], [2, 7, 3], [0, 0, 9]])
    ax = plot_traffic_matrix(count_WW)
    texts = [t.get_text() for t in ax.texts]
    assert sorted(map(int, texts)) == sorted(count_WW.reshape(-1).tolist())
    assert "22%" in ax.get_title()  # 6 of 27 slots cross ranks
    with pytest.raises(ValueError):
        plot_traffic_matrix(torch.zeros(2, 3))
    plt.close("all")


def test_rank_routing_counts_every_slot():
    expert_WN = rank_routing(4, 32, 16, 2, skew=1.0)
    assert len(expert_WN) == 4 and all(e.shape == (64,) for e in expert_WN)
    assert int(traffic_matrix(expert_WN, expert_ranks(16, 4), 4).sum()) == 4 * 64


def test_traffic_explorer_shows_the_library_matrix():
    w = traffic_explorer(n_ranks=4, n_experts=16)
    expected = traffic_matrix(rank_routing(4, 256, 16, 2, 0.0), expert_ranks(16, 4), 4)
    assert torch.equal(w.count_WW, expected)
    assert [list(row) for row in w.figures["traffic"].data[0].z] == expected.tolist()
    assert list(w.figures["received"].data[0].y) == expected.sum(0).tolist()
    assert w.model_fraction == 0.75
    assert abs(w.cross_fraction - 0.75) < 0.05  # uniform routing: (W - 1) / W


def test_skew_makes_a_straggler_but_not_more_traffic():
    """With every rank routing alike, the skew piles slots on one rank; the crossing share stays
    near (W - 1) / W whatever the skew."""
    w = traffic_explorer(n_ranks=4, n_experts=16)
    even = w.max_over_mean
    w.controls["skew"].value = 2.0
    assert w.max_over_mean > 2 * even
    assert abs(w.cross_fraction - 0.75) < 0.06
    assert "busiest rank" in w.summary.value
    w.controls["n_ranks"].value = 1
    assert w.cross_fraction == 0.0 and w.count_WW.shape == (1, 1)
    assert w.update_ms["n_ranks"]


def test_greedy_placement_is_a_valid_placement_in_the_explorer():
    w = traffic_explorer(n_ranks=4, n_experts=16)
    w.controls["placement"].value = "greedy"
    assert torch.bincount(w.rank_E, minlength=4).tolist() == [4, 4, 4, 4]
    assert int(w.count_WW.sum()) == 4 * 256 * 2


def test_traffic_explorer_refuses_bad_starts():
    for bad in (dict(n_ranks=3), dict(n_experts=12), dict(top_k=0)):
        with pytest.raises(ValueError):
            traffic_explorer(**bad)


def test_a2a_cost_by_hand():
    # Mixtral at EP = 8: 2 * 4096 * 2 * 4096 * 2 bytes * 7/8 = 117,440,512 bytes
    c = a2a_cost("Mixtral 8x7B", 8)
    assert c["bytes"] == 2 * 4096 * 2 * 4096 * 2 * 7 / 8
    assert c["NVLink 4 (450 GB/s)"] == pytest.approx(c["bytes"] / NVLINK4_BYTES_S)
    assert c["InfiniBand NDR (50 GB/s)"] == pytest.approx(c["bytes"] / IB_NDR_BYTES_S)
    assert c["compute"] == pytest.approx(4096 * 2 * 6 * 4096 * 14336 / H100_BF16_FLOPS)
    # DeepSeek-V3 does the same FLOPs per token (K*D*F: 8*7168*2048 = 2*4096*14336) but sends
    # K*D / (2*4096) = 7 times the bytes
    d = a2a_cost("DeepSeek-V3", 8)
    assert d["compute"] == pytest.approx(c["compute"])
    assert d["bytes"] == pytest.approx(7 * c["bytes"])
    assert d["InfiniBand NDR (50 GB/s)"] > d["compute"] > d["NVLink 4 (450 GB/s)"]
    with pytest.raises(ValueError):
        a2a_cost("Mixtral 8x7B", 16)  # more ranks than experts
    with pytest.raises(ValueError):
        a2a_cost("GPT-4", 2)


def test_cost_plot_draws_three_lines_per_model():
    axes = plot_a2a_cost()
    assert [len(ax.lines) for ax in axes] == [3, 3]
    # NVLink stops at one node (8 GPUs) for DeepSeek-V3
    nvlink = [ln for ln in axes[1].lines if "NVLink" in ln.get_label()][0]
    assert max(nvlink.get_xdata()) == 8
    plt.close("all")
