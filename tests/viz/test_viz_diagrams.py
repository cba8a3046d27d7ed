"""The MoE block picture: the chosen experts in their colours, the others grey, bad input refused."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from minimoe.viz._widgets import EMPTY_COLOUR, expert_colour  # noqa: E402
from minimoe.viz.diagrams import plot_moe_block  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_chosen_experts_are_coloured_and_the_rest_grey():
    fig = plot_moe_block(n_experts=6, chosen=(1, 4))
    ax = fig.axes[0]
    labels = {t.get_text(): t for t in ax.texts}
    assert all(f"E{e}" in labels for e in range(6)) and "E6" not in labels
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    faces = {to_hex(p.get_facecolor()).upper() for p in boxes}
    assert expert_colour(1).upper() in faces and expert_colour(4).upper() in faces
    assert expert_colour(0).upper() not in faces and EMPTY_COLOUR.upper() in faces
    assert any("K = 2 run" in t for t in labels)


def test_rejects_what_it_cannot_draw():
    with pytest.raises(ValueError, match="n_experts"):
        plot_moe_block(n_experts=40)
    with pytest.raises(ValueError, match="distinct"):
        plot_moe_block(n_experts=8, chosen=(2, 2))
    with pytest.raises(ValueError, match="distinct"):
        plot_moe_block(n_experts=8, chosen=(9,))
