"""The training figures: the animated load view and the collapse explorer's callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minimoe.collapse.lab import run_setting
from minimoe.viz.training import STRENGTHS, collapse_explorer, load_animation


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_load_animation_frames_are_the_shares() -> None:
    load_SE = torch.tensor([[4, 4, 0], [6, 2, 0], [8, 0, 0]])
    fig = load_animation(load_SE, title="t")
    assert [f.name for f in fig.frames] == ["0", "1", "2"]
    np.testing.assert_allclose(fig.frames[2].data[0].y, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(fig.frames[1].data[0].y, [0.75, 0.25, 0.0])
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "2"]
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    assert fig.layout.shapes[0].y0 == pytest.approx(1 / 3)  # the even share


def test_load_animation_limits_frames_and_rejects_bad_input() -> None:
    fig = load_animation(torch.ones(100, 4), max_frames=10)
    names = [f.name for f in fig.frames]
    assert len(names) == 10 and names[0] == "0" and names[-1] == "99"
    with pytest.raises(ValueError, match="2-D"):
        load_animation(torch.ones(5))
    with pytest.raises(ValueError, match="no steps"):
        load_animation(torch.ones(0, 4))
    with pytest.raises(ValueError, match=">= 0"):
        load_animation(-torch.ones(2, 2))


def test_collapse_explorer_reuses_results_and_reruns_on_change() -> None:
    res = run_setting("no balancing", steps=12)
    ex = collapse_explorer(results=[res], steps=12)
    assert len(ex.cache) == 1  # the handed-in run was used, not retrained
    fig = ex.figures["load"]
    shares = np.stack([np.asarray(t.y) for t in fig.data], axis=1)
    np.testing.assert_allclose(shares, res.load_SE / res.load_SE.sum(1, keepdim=True))
    assert ex.controls["strength"].disabled

    ex.controls["setting"].value = "bias balancing"
    assert ex.controls["strength"].options == STRENGTHS["bias"]
    assert ex.controls["strength"].value == pytest.approx(1e-2)
    assert not ex.controls["strength"].disabled and "bias balancing" in fig.layout.title.text
    ex.controls["strength"].value = 1e-1
    assert ("bias balancing", 0.1) in ex.cache and "(0.1)" in fig.layout.title.text
    assert "val loss" in ex.summary.value
    assert ex.update_ms["strength"], "the update was timed"
    with pytest.raises(ValueError, match="steps"):
        collapse_explorer(steps=0)


def test_load_animation_shares_an_axis_on_request_and_labels_the_line_outside_the_bars() -> None:
    collapsed = load_animation(torch.tensor([[2, 2, 2, 2], [8, 0, 0, 0]]))
    even = load_animation(torch.tensor([[2, 2, 2, 2], [3, 2, 2, 1]]))
    assert tuple(collapsed.layout.yaxis.range) == (0, 1.0)
    assert tuple(even.layout.yaxis.range) == pytest.approx((0, 0.4))  # 37.5 % rounded up
    same = [load_animation(x, y_max=0.6) for x in (torch.ones(3, 4), torch.eye(4)[:3])]
    assert all(tuple(f.layout.yaxis.range) == (0, 0.6) for f in same)
    label = collapsed.layout.annotations[0]
    assert "1/E = 0.250" in label.text and label.xref == "paper" and label.x > 1
    assert collapsed.layout.template.layout.plot_bgcolor == "white"
    with pytest.raises(ValueError, match="y_max"):
        load_animation(torch.ones(3, 4), y_max=0)
