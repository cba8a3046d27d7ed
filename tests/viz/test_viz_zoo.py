"""The zoo explorer, driven from Python: each control changes the figures as the maths says.

Small shapes (T=32, D=8, E=6) keep it quick.
"""

import numpy as np
import pytest
import torch

from minimoe import assign_slots, expert_capacity, route
from minimoe.viz.batches import TOKEN_BATCHES, token_batch
from minimoe.viz.zoo_explorer import CURVE_CFS, zoo_explorer
from minimoe.zoo import expert_choice, expert_choice_capacity

T, D, E = 32, 8, 6


@pytest.fixture
def zx():
    batches = {n: token_batch(n, T, D, seed=3) for n in TOKEN_BATCHES}
    return zoo_explorer(batches, n_experts=E, top_k=2, seed=0)


def _filled(w, row):
    """(expert, token) cells drawn in grid row 0 (token choice) or 1 (expert choice)."""
    z = np.array(w.figures["grid"].data[3 * row].z, dtype=object)
    return {(e, t) for e, t in zip(*np.nonzero(z != None))}  # noqa: E711 (JSON nulls)


def _codes(w, row):
    z = np.array(w.figures["grid"].data[3 * row].z, dtype=object)
    return np.where(z == None, -1, z).astype(int)  # noqa: E711


def _expected(w, cf, K, batch="random"):
    x_TD = w.batches[batch]
    logits_TE = x_TD @ w._w[D].t()
    probs_TE = logits_TE.softmax(-1)
    C = expert_capacity(T, E, K, "deepspeed", cf)
    r = route(logits_TE, K, "mixtral")
    keep_TK, _ = assign_slots(r.expert_TK, r.gate_TK, E, C, "position")
    token_EC, _ = expert_choice(probs_TE, expert_choice_capacity(T, E, K * cf))
    return C, r.expert_TK, keep_TK, token_EC


def test_the_grids_show_the_library_routings(zx):
    C, expert_TK, keep_TK, token_EC = _expected(zx, 1.0, 2)
    assert zx.capacity == C
    tc = {(int(e), t) for t in range(T) for e in expert_TK[t]}
    assert _filled(zx, 0) == tc  # every routed slot is drawn, kept or dropped
    codes = _codes(zx, 0)
    for t in range(T):
        for k in range(2):
            e = int(expert_TK[t, k])
            want = (e + E * (k > 0)) if keep_TK[t, k] else 2 * E
            assert codes[e, t] == want
    ec = {(e, int(t)) for e in range(E) for t in token_EC[e]}
    assert _filled(zx, 1) == ec
    assert (_codes(zx, 1)[_codes(zx, 1) >= 0] < E).all()  # expert choice: solid colours only
    dropped = zx.figures["grid"].data[1]
    assert len(dropped.x) == int((~keep_TK).sum())


def test_expert_choice_fills_exactly_E_times_C_and_token_choice_at_most(zx):
    for cf in (0.25, 0.5, 1.0, 1.75, 3.0):
        zx.controls["capacity_factor"].value = cf
        C = zx.capacity
        assert len(_filled(zx, 1)) == E * min(C, T)
        assert int(zx.ec_count_T.sum()) == E * min(C, T)
        assert int(zx.keep_TK.sum()) <= E * C
        load_E = torch.bincount(zx.expert_TK[zx.keep_TK], minlength=E)
        assert (load_E <= C).all()
        bars = zx.figures["grid"].data
        assert sum(bars[7].y) == E * min(C, T) and sum(bars[6].y) == int(zx.keep_TK.sum())


def test_tokens_with_no_expert_shrink_as_the_capacity_grows(zx):
    lost = []
    for cf in (0.25, 0.5, 0.75, 1.0, 2.0, 3.0):
        zx.controls["capacity_factor"].value = cf
        marks_tc = list(zx.figures["grid"].data[2].x)
        marks_ec = list(zx.figures["grid"].data[5].x)
        assert marks_tc == np.flatnonzero(zx.tc_count_T.numpy() == 0).tolist()
        assert marks_ec == np.flatnonzero(zx.ec_count_T.numpy() == 0).tolist()
        lost.append((len(marks_tc), len(marks_ec)))
        assert f"<b>{len(marks_ec)}</b> tokens with no expert, " in zx.summary.value
    for (tc0, ec0), (tc1, ec1) in zip(lost, lost[1:]):
        assert tc1 <= tc0 and ec1 <= ec0
    assert lost[0][0] > 0 and lost[0][1] > 0  # cf = 0.25: too few pairs for every token
    assert lost[-1] == (0, 0)  # cf = 3: everyone is served


def test_the_curve_matches_the_grid_at_the_current_setting(zx):
    for batch in ("random", "skewed"):
        zx.controls["batch"].value = batch
        for cf in (0.5, 1.25):
            zx.controls["capacity_factor"].value = cf
            curve = zx.figures["curve"]
            i = list(CURVE_CFS).index(cf)
            mark = list(curve.data[2].y)
            assert mark[0] == pytest.approx(curve.data[0].y[i])
            assert mark[1] == pytest.approx(curve.data[1].y[i])
            assert mark[1] == pytest.approx(float((zx.ec_count_T == 0).double().mean()))


def test_skewed_batch_drops_more_token_choice_slots(zx):
    zx.controls["capacity_factor"].value = 1.0
    dropped_random = int((~zx.keep_TK).sum())
    zx.controls["batch"].value = "skewed"
    assert int((~zx.keep_TK).sum()) > dropped_random
    assert len(_filled(zx, 1)) == E * zx.capacity  # expert choice stays exactly full


def test_top_k_scales_both_routers(zx):
    for K in (1, 3):
        zx.controls["top_k"].value = K
        C, expert_TK, keep_TK, token_EC = _expected(zx, 1.0, K)
        assert zx.capacity == C and torch.equal(zx.keep_TK, keep_TK)
        assert torch.equal(zx.token_EC, token_EC)
        assert f"K = {K}" in zx.summary.value


def test_figures_update_in_place_and_time_each_update(zx):
    ids = [id(t) for f in zx.figures.values() for t in f.data]
    zx.controls["capacity_factor"].value = 0.5
    zx.controls["batch"].value = "clustered"
    zx.controls["top_k"].value = 1
    assert ids == [id(t) for f in zx.figures.values() for t in f.data]
    for name in ("capacity_factor", "batch", "top_k"):
        assert zx.update_ms[name] and zx.update_ms[name][-1] > 0


def test_one_token_and_all_tokens_alike():
    x = torch.ones(5, 4)  # identical tokens: ties everywhere, ties go to the lower index
    w = zoo_explorer({"same": x}, n_experts=2, top_k=1)
    assert w.token_EC[:, 0].tolist() == [0, 0]  # every expert's first pick is token 0
    w1 = zoo_explorer({"one": torch.randn(1, 4)}, n_experts=3, top_k=1)
    assert int(w1.ec_count_T.sum()) == 3 and w1.capacity == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(n_experts=1), ValueError),
        (dict(n_experts=40), ValueError),
        (dict(top_k=0), ValueError),
        (dict(n_experts=2, top_k=3), ValueError),
        (dict(n_tokens=0), ValueError),
        (dict(batches={}), TypeError),
        (dict(batches={"x": torch.zeros(3)}), ValueError),
        (dict(batches={"x": torch.zeros(3, 2, dtype=torch.long)}), ValueError),
        (dict(batches={"x": torch.zeros(0, 2)}), ValueError),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, error):
    with pytest.raises(error):
        zoo_explorer(**kwargs)


# --- the static figures of chapter 08 ---------------------------------------------------------


def test_output_change_sees_the_future_only_where_it_leaks():
    import matplotlib

    matplotlib.use("Agg")
    from minimoe.viz.zoo import output_change, plot_output_change

    x = torch.randn(2, 10, 3, dtype=torch.float64)
    causal = output_change(lambda x: x.cumsum(1), x, 4)  # position s sees positions <= s
    leaky = output_change(lambda x: x + x.mean(1, keepdim=True), x, 4)  # sees the whole sequence
    assert (causal[:4] == 0).all() and (causal[4:] > 0).all()
    assert (leaky[:4] > 0).all()
    axes = plot_output_change({"causal": causal, "leaky": leaky}, 4)
    assert "causal: nothing before the cut moved" in axes[0].get_title(loc="left")
    assert "leaks" in axes[1].get_title(loc="left")
    heights = [p.get_height() for p in axes[1].patches]
    assert heights == pytest.approx(leaky.tolist())  # bars in position order, before then after
    with pytest.raises(ValueError, match="cut"):
        output_change(lambda x: x, x, 0)
    with pytest.raises(ValueError, match="x_BSD"):
        output_change(lambda x: x, x[0], 2)
    with pytest.raises(ValueError, match="empty"):
        plot_output_change({}, 2)


def test_soft_moe_weights_figure_draws_both_weightings():
    import matplotlib

    matplotlib.use("Agg")
    from minimoe.viz.zoo import plot_soft_moe_weights
    from minimoe.zoo import soft_moe_weights

    dispatch, combine = soft_moe_weights(torch.randn(6, 3, 2))
    axes = plot_soft_moe_weights(dispatch, combine)
    shown = [ax.images[0].get_array() for ax in axes]
    assert np.allclose(shown[0], dispatch.reshape(6, 6).numpy())
    assert np.allclose(shown[1].sum(1), 1) and np.allclose(shown[0].sum(0), 1)
    assert [t.get_text() for t in axes[0].get_xticklabels()][:3] == ["0.0", "0.1", "1.0"]
    with pytest.raises(ValueError, match="same shape"):
        plot_soft_moe_weights(dispatch, combine[:, :2])
    with pytest.raises(ValueError, match="T, E, C"):
        plot_soft_moe_weights(dispatch[0], combine)
