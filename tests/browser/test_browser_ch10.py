"""Chapter 10's cache explorer in real JupyterLab: the hit rate it shows follows the simulator.

The test opens the lesson in headless Chromium and runs only the cells the explorer needs: the
setup, the roofline explorer (for its screenshot), then, in place of the lesson's 200-step
training, an untrained model of the same shape (the explorer's agreement with the simulator does
not depend on the training, and skipping it keeps the test short), the generation that records
the trace, the explorer and the simulator's policy table. It then moves the explorer's
cache-size slider with the keyboard and picks another policy from its dropdown: each time, the
hit rate the explorer shows must be the one the policy table (computed by
`minimoe.serving.simulate` in the same kernel) prints for that policy and size, both explorers
must show their two plotly figures, and no widget may fail to display. Screenshots go to
build/screenshots/.
"""

from __future__ import annotations

import json
import re

import pytest
from jlab import ROOT, SCREENSHOTS, open_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LESSON = "notebooks/10_serving.ipynb"
# the cells the explorer needs, by the first line of their source
NEEDED = (
    "# Setup",
    "# The decode roofline explorer",
    "# Generate 200 bytes",
    "# The cache explorer",
    "# The policy table",
)
UNTRAINED = (
    "cfg = LMConfig(seq_len=64, d_model=48, n_layers=2, n_heads=4, n_experts=8, top_k=2, d_ff=48)\n"
    "model = TinyLM(cfg)"
)
HIT_RATE = "() => (document.querySelector('.minimoe-hit-rate') || {}).innerText || ''"


def _cell_indices() -> list[int]:
    cells = json.loads((ROOT / LESSON).read_text())["cells"]
    firsts = ["".join(c["source"]).split("\n", 1)[0] for c in cells]
    return [next(i for i, f in enumerate(firsts) if f.startswith(n)) for n in NEEDED]


def _table(text: str) -> dict[str, dict[int, str]]:
    """The policy table's hit rates: {policy: {N: '92.5%'}}."""
    lines = text.strip().splitlines()
    sizes = [int(n) for n in re.findall(r"N=(\d+)", lines[0])]
    table = {}
    for line in lines[1:]:
        name, *_ = line.split()
        table[name] = dict(zip(sizes, re.findall(r"(\d+\.\d%)", line)))
    return table


def test_cache_explorer_in_chapter_10(lab, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, errors = open_notebook(browser, lab, LESSON, "serving", height=900)
    page.set_viewport_size({"width": 1400, "height": 900})
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    indices = _cell_indices()
    for n, index in enumerate(indices):
        if NEEDED[n] == "# Generate 200 bytes":  # the model, untrained, in the lesson's kernel
            page.evaluate(
                "async (code) => { const k = window.jupyterapp.shell.currentWidget"
                ".sessionContext.session.kernel; await k.requestExecute({code}).done; }",
                UNTRAINED,
            )
        # run-cell's promise settles once the cell has run
        page.evaluate(
            "async (i) => { const nb = window.jupyterapp.shell.currentWidget.content;"
            " nb.activeCellIndex = i;"
            " await window.jupyterapp.commands.execute('notebook:run-cell'); }",
            index,
        )
    cells = page.locator(".jp-Notebook .jp-Cell")
    roofline_cell, explorer_cell, table_cell = (cells.nth(indices[i]) for i in (1, 3, 4))
    roofline_cell.scroll_into_view_if_needed()
    assert roofline_cell.locator(".js-plotly-plot").count() == 2
    roofline_cell.screenshot(path=str(SCREENSHOTS / "10_roofline_explorer.png"))
    table_text = table_cell.locator(".jp-OutputArea-output").first.inner_text()
    table = _table(table_text)
    assert set(table) == {"lru", "lfu", "prefetch", "belady"}, table_text

    page.wait_for_function(f"() => ({HIT_RATE})().length > 0", timeout=60_000)
    explorer_cell.scroll_into_view_if_needed()
    assert explorer_cell.locator(".js-plotly-plot").count() == 2
    assert page.evaluate(HIT_RATE) == table["lru"][8]  # the explorer starts at LRU, 8 experts
    explorer_cell.screenshot(path=str(SCREENSHOTS / "10_cache_explorer_lru_8.png"))

    slider = page.locator(".widget-slider").filter(has_text="cache (experts)").first
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowLeft")
    handle.press("ArrowLeft")  # 8 -> 6 experts
    page.wait_for_function(
        f"() => ({HIT_RATE})() === {json.dumps(table['lru'][6])}", timeout=30_000
    )

    select = page.locator(".widget-dropdown").filter(has_text="policy").locator("select").first
    select.select_option(label="Belady (optimal, knows the future)")
    page.wait_for_function(
        f"() => ({HIT_RATE})() === {json.dumps(table['belady'][6])}", timeout=30_000
    )
    assert table["belady"][6] != table["lru"][6] or table["lru"][6] == "100.0%"
    explorer_cell.screenshot(path=str(SCREENSHOTS / "10_cache_explorer_belady_6.png"))
    page.screenshot(path=str(SCREENSHOTS / "10_serving_page.png"))

    assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
    stderr = "[data-mime-type='application/vnd.jupyter.stderr']"
    assert explorer_cell.locator(stderr).count() == 0
    widget_errors = [m for m in console if "widget" in m.lower() or "model" in m.lower()]
    page.close()
    assert not widget_errors, widget_errors
    assert not [e for e in errors if "widget" in e.lower()], errors
