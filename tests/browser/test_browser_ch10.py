"""Chapter 10's cache explorer in real JupyterLab: the hit rate and the loads it shows follow the
simulator.

The test opens the lesson in headless Chromium and runs only the cells the explorer needs: the
setup, the roofline explorer (for its screenshot), then, in place of the lesson's training cell,
the same model trained the same way by `minimoe.serving.pretrained.tiny_model` (the model and
training settings read from the lesson's cell; trained once, in the test process, and kept in the
user cache folder, so the kernel only loads it), the generation that records the trace, the
explorer and the simulator's policy table. It then moves the explorer's cache-size slider with
the keyboard and picks other policies from its dropdown (Belady, then the prefetcher): each
time, the hit rate and the experts loaded that the explorer shows must be the ones the policy
table (computed by `minimoe.serving.simulate` in the same kernel) prints for that policy and
size, the prefetcher must show its prefetches, the explorers must show their plotly figures
(two for the roofline, three for the cache), and no widget may fail to display. Screenshots go
to build/screenshots/.
"""

from __future__ import annotations

import ast
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
TRAINING = "# Train the tiny LM"
HIT_RATE = "() => (document.querySelector('.minimoe-hit-rate') || {}).innerText || ''"
LOADS = "() => (document.querySelector('.minimoe-loads') || {}).innerText || ''"


def _trained_model_code() -> str:
    """Kernel code giving `cfg` and `model` as the lesson's training cell does, from the cache of
    `tiny_model` (filled here first: the kernel shares this process's environment)."""
    import torch

    from minimoe.lm.model import LMConfig
    from minimoe.lm.train import TrainConfig
    from minimoe.serving.pretrained import tiny_model

    cells = json.loads((ROOT / LESSON).read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "".join(c["source"]).startswith(TRAINING))
    cfg_line = re.search(r"^cfg = (LMConfig\(.*\))$", source, re.M)
    train_call = re.search(r"(TrainConfig\([^)]*\))", source)
    assert cfg_line and train_call, source
    cfg_expr, train_expr = cfg_line.group(1), train_call.group(1)

    def kwargs(call: str) -> dict:  # the keyword arguments of a call of literals
        return {k.arg: ast.literal_eval(k.value) for k in ast.parse(call).body[0].value.keywords}

    # one thread, as the lesson trains: two threads on a busy 2-core machine were ~7x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny_model(LMConfig(**kwargs(cfg_expr)), TrainConfig(**kwargs(train_expr)), progress=False)
    finally:
        torch.set_num_threads(threads)
    return (
        "from minimoe.serving.pretrained import tiny_model\n"
        f"cfg = {cfg_expr}\n"
        f"model, info = tiny_model(cfg, {train_expr}, progress=False)"
    )


def _cell_indices() -> list[int]:
    cells = json.loads((ROOT / LESSON).read_text())["cells"]
    firsts = ["".join(c["source"]).split("\n", 1)[0] for c in cells]
    return [next(i for i, f in enumerate(firsts) if f.startswith(n)) for n in NEEDED]


def _table(text: str) -> tuple[dict[str, dict[int, str]], dict[str, dict[int, str]]]:
    """The policy table's hit rates and experts loaded: ({policy: {N: '92.5%'}},
    {policy: {N: '123'}})."""
    lines = text.strip().splitlines()
    sizes = [int(n) for n in re.findall(r"N=(\d+)", lines[0])]
    rates, loads = {}, {}
    for line in lines[1:]:
        name, *_ = line.split()
        cells = re.findall(r"(\d+\.\d%) \(\s*(\d+)\)", line)
        rates[name] = {n: rate for n, (rate, _) in zip(sizes, cells)}
        loads[name] = {n: count for n, (_, count) in zip(sizes, cells)}
    return rates, loads


def _shows(page, rate: str, loads: str) -> None:
    """Wait until the explorer shows this hit rate and this many experts loaded."""
    page.wait_for_function(
        f"() => ({HIT_RATE})() === {json.dumps(rate)} && ({LOADS})() === {json.dumps(loads)}",
        timeout=30_000,
    )


def test_cache_explorer_in_chapter_10(lab, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, errors = open_notebook(browser, lab, LESSON, "serving", height=900)
    page.set_viewport_size({"width": 1400, "height": 900})
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    indices = _cell_indices()
    model_code = _trained_model_code()
    for n, index in enumerate(indices):
        if NEEDED[n] == "# Generate 200 bytes":  # the lesson's model, trained, in its kernel
            page.evaluate(
                "async (code) => { const k = window.jupyterapp.shell.currentWidget"
                ".sessionContext.session.kernel; await k.requestExecute({code}).done; }",
                model_code,
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
    table, loads = _table(table_text)
    assert set(table) == set(loads) == {"lru", "lfu", "prefetch", "belady"}, table_text
    assert all(len(table[p]) == 5 for p in table), table_text

    page.wait_for_function(f"() => ({HIT_RATE})().length > 0", timeout=60_000)
    explorer_cell.scroll_into_view_if_needed()
    assert explorer_cell.locator(".js-plotly-plot").count() == 3
    _shows(page, table["lru"][8], loads["lru"][8])  # the explorer starts at LRU, 8 experts
    explorer_cell.screenshot(path=str(SCREENSHOTS / "10_cache_explorer_lru_8.png"))

    slider = page.locator(".widget-slider").filter(has_text="cache (experts)").first
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowLeft")
    handle.press("ArrowLeft")  # 8 -> 6 experts
    _shows(page, table["lru"][6], loads["lru"][6])

    select = page.locator(".widget-dropdown").filter(has_text="policy").locator("select").first
    select.select_option(label="Belady (optimal, knows the future)")
    _shows(page, table["belady"][6], loads["belady"][6])
    assert table["belady"][6] != table["lru"][6] or table["lru"][6] == "100.0%"
    explorer_cell.screenshot(path=str(SCREENSHOTS / "10_cache_explorer_belady_6.png"))

    select.select_option(label="prefetch (LRU + next layer)")
    _shows(page, table["prefetch"][6], loads["prefetch"][6])
    # its loads are its misses plus experts nobody asked for, which the summary counts apart
    summary = page.evaluate(
        "() => document.querySelector('.minimoe-loads').parentElement.innerText"
    )
    split = re.search(r"\((\d+) on a miss, (\d+) prefetched\)", summary)
    assert split, summary
    assert int(split.group(1)) + int(split.group(2)) == int(loads["prefetch"][6])
    assert int(split.group(2)) > 0
    titles = [t.text_content() or "" for t in explorer_cell.locator(".gtitle").all()]
    assert any(t.startswith("Prefetch, 6 experts cached: hit rate") for t in titles), titles
    explorer_cell.screenshot(path=str(SCREENSHOTS / "10_cache_explorer_prefetch_6.png"))
    loads_figure = explorer_cell.locator(".js-plotly-plot").nth(2)
    loads_figure.scroll_into_view_if_needed()
    loads_figure.screenshot(path=str(SCREENSHOTS / "10_cache_explorer_prefetch_6_loads.png"))
    page.screenshot(path=str(SCREENSHOTS / "10_serving_page.png"))

    assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
    stderr = "[data-mime-type='application/vnd.jupyter.stderr']"
    assert explorer_cell.locator(stderr).count() == 0
    widget_errors = [m for m in console if "widget" in m.lower() or "model" in m.lower()]
    page.close()
    assert not widget_errors, widget_errors
    assert not [e for e in errors if "widget" in e.lower()], errors
