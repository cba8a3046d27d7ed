"""The drop-policy figure shows what assign_slots decides, with labels that can be read."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from minimoe import assign_slots, route  # noqa: E402
from minimoe.viz._widgets import DROPPED_COLOUR, contrast_ratio, expert_colour  # noqa: E402
from minimoe.viz.slots import plot_drop_policies  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _small():
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(6))
    return route(logits + torch.tensor([0.8, 0.0, 0.0, -0.5]), 2, "mixtral")


def test_masks_are_assign_slots_and_each_slot_is_coloured_by_them():
    r = _small()
    fig, keeps = plot_drop_policies(r.expert_TK, r.gate_TK, 4, 4, ["position", "k_major"])
    for ax, policy in zip(fig.axes, ["position", "k_major"]):
        want, _ = assign_slots(r.expert_TK, r.gate_TK, 4, 4, policy)
        assert torch.equal(keeps[policy], want)
        # the solid patches, row by row: one per slot, in (t, k) order
        faces = [to_hex(p.get_facecolor()) for p in ax.patches if p.get_fill()]
        assert len(faces) == 24
        for (t, k), face in zip([(t, k) for t in range(12) for k in range(2)], faces):
            kept = bool(want[t, k])
            expected = expert_colour(int(r.expert_TK[t, k])) if kept else DROPPED_COLOUR
            assert face.upper() == expected.upper()
        assert f"first choices dropped {int((~want[:, 0]).sum())}" in ax.get_title(loc="left")


def test_every_label_reads_on_its_slot():
    r = _small()
    fig, _ = plot_drop_policies(r.expert_TK, r.gate_TK, 4, 4, ["probs"])
    ax = fig.axes[0]
    faces = [to_hex(p.get_facecolor()) for p in ax.patches if p.get_fill()]
    texts = ax.texts
    assert len(texts) == len(faces) == 24
    for text, face in zip(texts, faces):
        assert text.get_fontsize() >= 8
        assert contrast_ratio(to_hex(text.get_color()), face) >= 4.5, (text.get_text(), face)


def test_rejects_bad_input():
    r = _small()
    with pytest.raises(ValueError, match="gate_TK"):
        plot_drop_policies(r.expert_TK, r.gate_TK[:, :1], 4, 4)
    with pytest.raises(ValueError, match="1 to 32 tokens"):
        plot_drop_policies(torch.zeros(40, 2, dtype=torch.long), torch.ones(40, 2), 4, 4)
    with pytest.raises(ValueError, match="expert ids"):
        plot_drop_policies(r.expert_TK, r.gate_TK, 2, 4)
    with pytest.raises(ValueError, match="at least one"):
        plot_drop_policies(r.expert_TK, r.gate_TK, 4, 4, [])
