"""The padded-blocks figure draws align_block_size's lists: one square per row, padding marked."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from minimoe.triton import align_block_size  # noqa: E402
from minimoe.viz._widgets import contrast_ratio, expert_colour  # noqa: E402
from minimoe.viz.blocks import plot_padded_blocks  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


EX_TK = torch.tensor([[0, 1], [1, 0], [2, 1], [1, 2], [0, 1]])


def test_one_square_per_row_coloured_by_its_block_and_padding_hatched():
    sorted_ids, expert_ids, _ = align_block_size(EX_TK, None, n_experts=4, block_m=4)
    ax = plot_padded_blocks(sorted_ids, expert_ids, n_slots=10, block_m=4, top_k=2)
    rows = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() == 1]
    assert len(rows) == len(sorted_ids) == 16
    for i, (row, slot) in enumerate(zip(rows, sorted_ids.tolist())):
        e = int(expert_ids[i // 4])
        assert (row.get_hatch() == "///") == (slot == 10)
        if slot != 10:
            assert to_hex(row.get_facecolor()).upper() == expert_colour(e).upper()
    labels = [t for t in ax.texts if t.get_text().startswith("s") or t.get_text() == "pad"]
    assert [t.get_text() for t in labels].count("pad") == int((sorted_ids == 10).sum())
    assert "s9\nt4" in [t.get_text() for t in labels]
    for text, row in zip(labels, rows):
        assert contrast_ratio(to_hex(text.get_color()), to_hex(row.get_facecolor())) >= 4.5


def test_rejects_lists_that_do_not_fit():
    sorted_ids, expert_ids, _ = align_block_size(EX_TK, None, n_experts=4, block_m=4)
    with pytest.raises(ValueError, match="block_m"):
        plot_padded_blocks(sorted_ids, expert_ids, 10, block_m=8, top_k=2)
    with pytest.raises(ValueError, match="slot ids"):
        plot_padded_blocks(sorted_ids + 5, expert_ids, 10, block_m=4, top_k=2)
    with pytest.raises(ValueError, match=">= 1"):
        plot_padded_blocks(sorted_ids, expert_ids, 10, block_m=0, top_k=2)
