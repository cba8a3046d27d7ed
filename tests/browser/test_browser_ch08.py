"""Chapter 08's zoo explorer in real JupyterLab, in headless Chromium driven by Playwright.

The lesson runs in the browser up to the explorer (the cells after it, the causality figures and
the arena, are not needed), then the capacity-factor slider is moved with the keyboard and the
figures must change as the maths says: expert choice fills exactly E·C (token, expert) pairs,
token choice keeps at most E·C slots, and the tokens left with no expert become fewer as the
capacity grows. No widget may fail to display. Screenshots (1400 x 900) go to build/screenshots/.
"""

from __future__ import annotations

import json

import pytest
from jlab import IDLE, ROOT, SCREENSHOTS, TIMEOUT_MS, open_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LESSON = "notebooks/08_routing_zoo.ipynb"
E, T, K = 8, 48, 2  # the explorer's defaults, as the lesson calls it

# The explorer's plotly figures in page order: the curve beside the controls, then the grid
# (traces: token choice grid, dropped, lost; expert choice grid, -, lost; the two bar series).
READ = """() => {
    const plots = [...document.querySelectorAll('.js-plotly-plot')];
    const grid = plots.find(p => p.data && p.data.length === 8);
    if (!grid) return null;
    const sum = t => Array.from(t.y || []).map(Number).reduce((a, b) => a + b, 0);
    return {
        tcKept: sum(grid.data[6]), ecPairs: sum(grid.data[7]),
        tcLost: Array.from(grid.data[2].x || []).length,
        ecLost: Array.from(grid.data[5].x || []).length,
        svg: (grid.querySelector('.cartesianlayer') || {}).innerHTML || '',
    };
}"""


def _explorer_cell() -> int:
    """The index of the lesson's code cell that shows the explorer."""
    cells = json.loads((ROOT / LESSON).read_text())["cells"]
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.rstrip().endswith("zoo_explorer()"):
            return i
    raise AssertionError(f"{LESSON} has no cell ending in zoo_explorer()")


def _read(page, want_pairs: int) -> dict:
    page.wait_for_function(
        f"() => {{ const s = ({READ})(); return s && s.ecPairs === {want_pairs}; }}",
        timeout=TIMEOUT_MS,
    )
    return page.evaluate(READ)


def test_zoo_explorer_in_chapter_08(lab, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, errors = open_notebook(browser, lab, LESSON, "zoo", height=900)
    page.set_viewport_size({"width": 1400, "height": 900})
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    index = _explorer_cell()
    # run every cell up to and including the explorer (not awaited: it settles when they ran)
    page.evaluate(
        "(i) => { const nb = window.jupyterapp.shell.currentWidget.content;"
        " nb.activeCellIndex = i + 1;"
        " window.jupyterapp.commands.execute('notebook:run-all-above'); }",
        index,
    )
    try:
        start = _read(page, E * 12)  # cf = 1: C = ceil(T*K*cf/E) = 12
    except Exception:
        page.screenshot(path=str(SCREENSHOTS / "08_zoo_timeout.png"), full_page=True)
        raise
    page.locator(IDLE).first.wait_for(timeout=TIMEOUT_MS)
    assert start["tcKept"] <= E * 12
    slider = page.locator(".widget-slider").filter(has_text="capacity factor cf").first
    slider.scroll_into_view_if_needed()
    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".js-plotly-plot")).first
    explorer.screenshot(path=str(SCREENSHOTS / "08_zoo_explorer_cf1.png"))

    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(2):
        handle.press("ArrowLeft")  # cf 1.0 -> 0.5 (step 0.25): C = 6
    low = _read(page, E * 6)
    assert low["tcKept"] <= E * 6
    assert low["ecLost"] > start["ecLost"] and low["tcLost"] > start["tcLost"]
    assert low["svg"] != start["svg"]
    assert "C = <b>6</b>" in page.locator(".jp-Notebook").inner_html()
    page.screenshot(path=str(SCREENSHOTS / "08_zoo_explorer_cf05_page.png"))
    explorer.screenshot(path=str(SCREENSHOTS / "08_zoo_explorer_cf05.png"))

    text = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in text
    stderr = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    assert page.locator(stderr).count() == 0
    widget_errors = [m for m in console if "widget" in m.lower() or "model" in m.lower()]
    page.close()
    assert not widget_errors, widget_errors
    assert not [e for e in errors if "widget" in e.lower()], errors
