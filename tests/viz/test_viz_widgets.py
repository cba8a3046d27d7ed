"""The explorers, driven from Python: each control changes the figures as the maths says, in place.

Shapes are small (T=48, D=8) so the tests are quick; `python -m minimoe.bench.widgets` measures
T=512, E=16.
"""

import math

import numpy as np
import pytest
import torch

from minimoe import assign_slots, expert_capacity, renormalize_survivors, route, routing_stats
from minimoe.testing import assert_close
from minimoe.viz._widgets import expert_colour
from minimoe.viz.batches import TOKEN_BATCHES, routing_batch, token_batch
from minimoe.viz.capacity_explorer import capacity_explorer
from minimoe.viz.routing_explorer import routing_explorer

T, D = 48, 8


@pytest.fixture
def rx():
    batches = {n: token_batch(n, T, D, seed=3) for n in TOKEN_BATCHES}
    return routing_explorer(batches=batches, n_experts=6, top_k=2, seed=0, max_tokens=T)


def _z(w):
    return torch.tensor(np.asarray(w.figures["heatmap"].data[0].z, dtype=np.float64))


def _marks(w, k):
    trace = w.figures["heatmap"].data[1 + k]
    return np.asarray(trace.x), np.asarray(trace.y), np.asarray(trace.marker.size)


def _load(w):
    return np.asarray(w.figures["load"].data[0].y)


def _expected_routing(w, gating="mixtral", K=2, E=6, temperature=1.0, batch="random"):
    """The routing recomputed from the explorer's router weights, without the explorer."""
    x_TD = w.batches[batch]
    logits_TE = x_TD @ w._w[D][:E].t() / temperature
    return route(logits_TE, K, gating)


def test_heatmap_shows_the_library_routing(rx):
    r = _expected_routing(rx)
    assert_close(_z(rx), r.probs_TE.T.double(), name="heatmap z", atol=1e-6)
    for k in range(2):
        x, y, _ = _marks(rx, k)
        assert np.array_equal(x, np.arange(T)) and np.array_equal(y, r.expert_TK[:, k].numpy())
        colours = rx.figures["heatmap"].data[1 + k].marker.color
        assert list(colours) == [expert_colour(int(e)) for e in r.expert_TK[:, k]]
    gates = np.asarray(rx.figures["heatmap"].data[1].customdata)
    assert_close(torch.tensor(gates), r.gate_TK[:, 0].double(), name="gates", atol=1e-6)


def test_top_k_changes_the_load_sum_to_T_times_K(rx):
    for K in (1, 3, 2):
        rx.controls["top_k"].value = K
        assert _load(rx).sum() == T * K
        assert rx.stats.routed_E.sum() == T * K
    rx.controls["top_k"].value = 1
    assert len(_marks(rx, 1)[0]) == 0  # no second choices to mark


def test_n_experts_clamps_top_k(rx):
    rx.controls["n_experts"].value = 6
    rx.controls["top_k"].value = 5
    rx.controls["n_experts"].value = 3
    assert rx.controls["top_k"].max == 3 and rx.controls["top_k"].value == 3
    assert len(_load(rx)) == 3 and _load(rx).sum() == T * 3
    assert _z(rx).shape == (3, T)
    assert list(rx.figures["heatmap"].layout.yaxis.range) == [-0.5, 2.5]
    assert rx.update_ms["n_experts"][-1] > 0  # one timed update, the clamp inside it


def test_switch_vs_mixtral_changes_the_marks_not_the_probabilities(rx):
    z_mixtral, sizes_mixtral = _z(rx), _marks(rx, 0)[2]
    rx.controls["gating"].value = "switch"
    assert_close(_z(rx), z_mixtral, name="probabilities")
    assert np.array_equal(_marks(rx, 0)[1], _expected_routing(rx).expert_TK[:, 0].numpy())
    assert (_marks(rx, 0)[2] < sizes_mixtral).all()  # un-renormalised gates are smaller
    gates = np.asarray(rx.figures["heatmap"].data[1].customdata)
    expected = _expected_routing(rx, "switch").gate_TK[:, 0]
    assert_close(torch.tensor(gates), expected.double(), name="switch gates", atol=1e-6)


def test_deepseek_v3_shows_sigmoid_scores(rx):
    rx.controls["gating"].value = "deepseek_v3"
    assert_close(_z(rx), _expected_routing(rx, "deepseek_v3").probs_TE.T.double(), atol=1e-6)
    assert rx.figures["heatmap"].data[0].colorbar.title.text == "sigmoid score"


def test_skewed_batch_raises_the_max_load(rx):
    random_max = _load(rx).max()
    rx.controls["batch"].value = "skewed"
    assert _load(rx).max() > 1.5 * random_max
    assert rx.stats.max_over_mean > 2


@pytest.mark.parametrize("noise", ["shazeer", "jitter", "gumbel"])
def test_noise_changes_routing_only_in_training_mode(rx, noise):
    clean = rx.routing.expert_TK.clone()
    rx.controls["noise"].value = noise
    rx.controls["noise_strength"].value = 1.0
    assert torch.equal(rx.routing.expert_TK, clean)  # eval mode: the noise is off
    assert rx.controls["noise_strength"].disabled
    rx.controls["mode"].value = "training"
    assert not torch.equal(rx.routing.expert_TK, clean)
    assert np.array_equal(_marks(rx, 0)[1], rx.routing.expert_TK[:, 0].numpy())
    assert "re-routed" in rx.info.value and "training mode" in rx.noise_note.value
    again = rx.routing.expert_TK.clone()
    rx.controls["temperature"].value = 1.0001  # any update: the same noise sample
    rx.controls["temperature"].value = 1.0
    assert torch.equal(rx.routing.expert_TK, again)
    rx.controls["mode"].value = "eval"
    assert torch.equal(rx.routing.expert_TK, clean)


def test_gumbel_noise_is_for_the_selection_only(rx):
    rx.controls["mode"].value = "training"
    rx.controls["noise"].value = "gumbel"
    assert_close(_z(rx), _expected_routing(rx).probs_TE.T.double(), atol=1e-6)


def test_temperature_changes_entropy_not_the_choice(rx):
    experts = rx.routing.expert_TK.clone()
    entropies = []
    for tau in (0.2, 1.0, 5.0):
        rx.controls["temperature"].value = tau
        assert torch.equal(rx.routing.expert_TK, experts)
        expected = routing_stats(
            experts, 6, probs_TE=_expected_routing(rx, temperature=tau).probs_TE
        )
        assert rx.stats.entropy == pytest.approx(expected.entropy, rel=1e-4)
        assert f"{expected.entropy:.3f}" in rx.info.value
        entropies.append(rx.stats.entropy)
    assert entropies[0] < entropies[1] < entropies[2] <= math.log(6) + 1e-6


def test_figures_update_in_place_and_time_each_update(rx):
    heat, load = rx.figures["heatmap"], rx.figures["load"]
    traces = [id(t) for t in heat.data + load.data]
    for name, value in [("n_experts", 4), ("top_k", 3), ("gating", "shazeer"), ("batch",
                        "clustered"), ("mode", "training"), ("noise", "jitter")]:  # fmt: skip
        before = len(rx.update_ms[name])
        rx.controls[name].value = value
        assert len(rx.update_ms[name]) == before + 1
        assert rx.last_update_ms == rx.update_ms[name][-1] and 0 < rx.last_update_ms < 60_000
    assert rx.figures["heatmap"] is heat and rx.figures["load"] is load
    assert [id(t) for t in heat.data + load.data] == traces


def test_window_moves_the_heatmap_and_labels_follow():
    x_TD = token_batch("clustered", 20, D)
    tokens = [f"w{i}" for i in range(20)]
    w = routing_explorer(x_TD, tokens=tokens, max_tokens=8, n_experts=4)
    assert list(w.controls["batch"].options)[0] == "x_TD"
    assert list(w.figures["heatmap"].layout.xaxis.ticktext) == tokens[:8]
    w.controls["window"].value = 16
    assert list(w.figures["heatmap"].data[0].x) == [16, 17, 18, 19]
    assert list(w.figures["heatmap"].layout.xaxis.ticktext) == tokens[16:]


def test_heatmap_height_follows_E_within_a_window_and_edge_markers_are_whole(rx):
    from minimoe.viz.routing_explorer import HEATMAP_MAX_PX, heatmap_height

    heat = rx.figures["heatmap"]
    for E in (2, 6, 16, 32):
        rx.controls["n_experts"].value = E
        assert heat.layout.height == heatmap_height(E) <= HEATMAP_MAX_PX
    assert heatmap_height(8) < heatmap_height(16) and heatmap_height(32) == HEATMAP_MAX_PX
    # markers on the first and last token of the window are drawn whole, past the axis edge
    assert all(trace.cliponaxis is False for trace in heat.data[1:])
    assert "no preference" in rx.info.value and "undecided" not in rx.info.value


def test_routing_explorer_edge_cases_and_errors():
    w = routing_explorer(torch.randn(1, 5), n_experts=3, top_k=3)  # T = 1, K = E
    assert _load(w).sum() == 3
    with pytest.raises(ValueError, match="top_k"):
        routing_explorer(n_experts=4, top_k=5)
    with pytest.raises(ValueError, match="NaN"):
        routing_explorer(torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match=r"\(T >= 1, D\)"):
        routing_explorer(torch.randn(0, 3))
    with pytest.raises(ValueError, match="n_experts"):
        routing_explorer(n_experts=1)


# --- capacity explorer ---------------------------------------------------------------------


@pytest.fixture
def cx():
    return capacity_explorer(n_experts=6, top_k=2, n_tokens=T, seed=0)


def _queue(w):
    return np.asarray(w.figures["queues"].data[0].z, dtype=np.float64)


def _expected_keep(w, cf, formula="deepspeed", policy="position", batch="balanced"):
    expert_TK, gate_TK = w.routings[batch]
    C = expert_capacity(T, 6, 2, formula, cf)
    gen = torch.Generator().manual_seed(0)
    return assign_slots(expert_TK, gate_TK, 6, C, policy, generator=gen)[0], C


def test_lower_capacity_factor_raises_the_shown_drop_rate(cx):
    cx.controls["batch"].value = "balanced"
    shown = []
    for cf in (2.0, 1.0, 0.5, 0.25):
        cx.controls["capacity_factor"].value = cf
        keep_TK, C = _expected_keep(cx, cf)
        expected = 1 - keep_TK.float().mean().item()
        assert cx.capacity == C and torch.equal(cx.keep_TK, keep_TK)
        assert cx.drop_rate == pytest.approx(expected)
        marker = cx.figures["drop_curve"].data[2]
        assert list(marker.x) == [cf] and marker.y[0] == pytest.approx(expected)
        assert f"(<b>{expected:.1%}</b>)" in cx.summary.value
        shown.append(cx.drop_rate)
    assert shown == sorted(shown) and shown[0] < shown[-1]


def test_queue_grid_kept_dropped_and_capacity_line(cx):
    cx.controls["batch"].value = "skewed"
    cx.controls["capacity_factor"].value = 0.75
    z, C = _queue(cx), cx.capacity
    E = 6
    filled = ~np.isnan(z)
    assert filled.sum() == T * 2
    load_E = torch.bincount(cx.routings["skewed"][0].reshape(-1), minlength=E).numpy()
    assert np.array_equal(filled.sum(1), load_E)
    kept_cells = filled & (z < 2 * E)
    assert np.array_equal(kept_cells.sum(1), np.minimum(load_E, C))  # the first C places
    assert not (kept_cells[:, C:]).any()
    dropped = cx.figures["queues"].data[1]
    assert len(dropped.x) == int((~cx.keep_TK).sum()) and min(dropped.x) >= C
    assert list(cx.figures["queues"].data[2].x) == [C - 0.5, C - 0.5]


def test_formulas_give_the_library_capacity(cx):
    cx.controls["capacity_factor"].value = 1.25
    for formula in ("megatron", "tutel", "deepspeed"):
        cx.controls["formula"].value = formula
        assert cx.capacity == expert_capacity(T, 6, 2, formula, 1.25)
    cx.controls["formula"].value = "switch"  # the paper's T/E * cf, missing the x K
    assert cx.capacity == int(T / 6 * 1.25) and cx.drop_rate > 0.3
    cx.controls["formula"].value = "dropless"
    assert cx.capacity is None and cx.drop_rate == 0 and cx.keep_TK.all()
    assert len(cx.figures["queues"].data[2].x) == 0
    assert cx.controls["capacity_factor"].disabled
    assert "No slot dropped" in cx.table.value


def test_policy_changes_which_slots_not_how_many(cx):
    cx.controls["batch"].value = "skewed"
    cx.controls["capacity_factor"].value = 0.75
    n_dropped = int((~cx.keep_TK).sum())
    expert_TK, gate_TK = cx.routings["skewed"]
    for policy in ("k_major", "probs", "random", "batch_priority"):
        cx.controls["policy"].value = policy
        keep_TK, _ = _expected_keep(cx, 0.75, policy=policy, batch="skewed")
        assert torch.equal(cx.keep_TK, keep_TK), policy
        assert int((~cx.keep_TK).sum()) == n_dropped
        if policy == "probs":  # per expert, every kept gate >= every dropped gate
            for e in range(6):
                on_e = expert_TK == e
                kept, lost = gate_TK[on_e & keep_TK], gate_TK[on_e & ~keep_TK]
                assert len(lost) == 0 or kept.min() >= lost.max()
    cx.controls["policy"].value = "position"
    position_keep = cx.keep_TK.clone()
    cx.controls["policy"].value = "k_major"
    assert not torch.equal(cx.keep_TK, position_keep)
    assert (~cx.keep_TK[:, 0]).sum() < (~position_keep[:, 0]).sum()  # first choices first


def test_renormalise_changes_the_shown_gates(cx):
    cx.controls["batch"].value = "skewed"
    cx.controls["capacity_factor"].value = 0.75
    expert_TK, gate_TK = cx.routings["skewed"]
    assert_close(cx.gate_after_TK, gate_TK * cx.keep_TK, name="not renormalised")
    plain_table = cx.table.value
    cx.controls["renormalize"].value = True
    assert_close(cx.gate_after_TK, renormalize_survivors(gate_TK, cx.keep_TK), name="renorm")
    half = cx.keep_TK.sum(1) == 1  # tokens that lost one of their two slots
    assert half.any()
    assert_close(cx.gate_after_TK[half].sum(1), torch.ones(int(half.sum())), atol=1e-5)
    assert cx.table.value != plain_table and "renormalised" in cx.table.value
    text = np.asarray(cx.figures["queues"].data[0].text, dtype=object)
    assert any("gate now 1.000" in s for s in text.reshape(-1))


def test_capacity_explorer_updates_in_place(cx):
    queues, curve = cx.figures["queues"], cx.figures["drop_curve"]
    traces = [id(t) for t in queues.data + curve.data]
    for name, value in [("capacity_factor", 0.5), ("formula", "tutel"), ("policy", "probs"),
                        ("renormalize", True), ("batch", "skewed")]:  # fmt: skip
        cx.controls[name].value = value
        assert cx.last_update_ms == cx.update_ms[name][-1] > 0
    assert cx.figures["queues"] is queues and cx.figures["drop_curve"] is curve
    assert [id(t) for t in queues.data + curve.data] == traces


def test_capacity_explorer_with_a_given_routing():
    # hand-computed: megatron C = ceil(4 * 2 / 3 * 0.3) = 1; position keeps t0k0, t0k1, t3k0
    expert_TK = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 0]])
    gate_TK = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
    w = capacity_explorer(expert_TK, gate_TK, n_experts=3)
    assert list(w.controls["batch"].options) == ["yours", "balanced", "skewed"]
    w.controls["formula"].value = "megatron"
    w.controls["capacity_factor"].value = 0.3
    assert w.capacity == 1
    assert w.keep_TK.tolist() == [[True, True], [False, False], [False, False], [True, False]]
    assert w.drop_rate == 5 / 8
    assert "2 tokens lost every expert" in w.summary.value
    assert w.queue_TK.tolist() == [[0, 0], [1, 1], [2, 2], [0, 3]]


def test_capacity_explorer_errors():
    e, g = routing_batch("balanced", 8, 4, 2)
    with pytest.raises(ValueError, match="both"):
        capacity_explorer(e)
    with pytest.raises(ValueError, match="expert ids"):
        capacity_explorer(e, g, n_experts=2)
    with pytest.raises(ValueError, match="shape"):
        capacity_explorer(e, g[:, :1], n_experts=4)
    with pytest.raises(ValueError, match="top_k"):
        capacity_explorer(n_experts=2, top_k=3)


def test_latency_bench_drives_every_control(tmp_path, capsys):
    import json

    from minimoe.bench.widgets import CAPACITY_SWEEP, main

    out = tmp_path / "widgets.json"
    main(["-T", "32", "-E", "4", "--repeats", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["T"] == 32 and report["E"] == 4
    assert set(report["results"]["capacity_explorer"]) == set(CAPACITY_SWEEP)
    for rows in report["results"].values():
        for row in rows.values():
            assert row["n"] >= 1 and 0 < row["median_ms"] <= row["p90_ms"] <= row["max_ms"]
    assert "median ms" in capsys.readouterr().out


def test_the_dropped_slots_table_pads_every_cell(cx):
    """Without padding of their own, JupyterLab draws the headers run together."""
    import re

    cx.controls["batch"].value = "skewed"
    cx.controls["capacity_factor"].value = 0.75
    cells = re.findall(r"<(th|td)( [^>]*)?>", cx.table.value)
    assert len([c for c in cells if c[0] == "th"]) == 7
    assert len(cells) > 7 and all("padding:" in attrs for _, attrs in cells)
