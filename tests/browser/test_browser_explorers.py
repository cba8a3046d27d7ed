"""Chapter 01's parameter explorer and chapter 05's padding explorer, in real JupyterLab.

Each test opens the lesson, runs it all (Run All, as a learner does), moves the explorer's
sliders with the keyboard as soon as it is drawn, and checks that the figures change as the maths
says:

- parameters (chapter 01): the figure shows the state the lesson's cells drove it to from Python
  (OLMoE-1B-7B), and the dropdown brings back Mixtral-8x7B; the experts' total is E/K times their
  active share; one more expert per token adds exactly one expert's worth to the active bar and
  nothing to the total; twice the experts double the experts' total and leave the active bar
  alone; the shared part grows only by the routers' new rows.
- padding (chapter 05): the loop and the grouped matmul multiply exactly the T·K routed rows; the
  einsum multiplies E·C rows and keeps useful + dropped = T·K; the padded bmm pads to E times the
  busiest expert; more skew means more padding and more drops; a larger capacity factor, a
  larger C.

No widget may fail to display. Screenshots (1400 x 900) go to build/screenshots/.
"""

from __future__ import annotations

import math
import time

import pytest
from jlab import IDLE, SCREENSHOTS, TIMEOUT_MS, open_notebook

from minimoe.params import PUBLISHED_CONFIGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
]

# every plotly figure on the page, in page order: each trace's x and y, and the title
READ_PLOTS = """() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.data).map(p => ({
    x: p.data.map(t => Array.from(t.x || []).map(Number)),
    y: p.data.map(t => Array.from(t.y || []).map(v => typeof v === 'string' ? v : Number(v))),
    title: ((p.layout.title || {}).text) || '',
}))"""

STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"


def _run_all(page) -> None:
    """Run the whole lesson, as a learner's "Run All" does (not awaited: the command's promise
    settles only when every cell has run). A figure widget displayed by a cell run on its own
    (notebook:run-cell) came up empty in this JupyterLab, while the same cell run by Run All drew
    its data, so the tests take the learner's path."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


ALL_RUN = """() => {
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
        .map(e => e.innerText);
    return prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t));
}"""


def _wait_until_all_run(page, timeout: int) -> None:
    """Every code cell shows its execution count: the lesson has run, the kernel is free for the
    widgets' messages."""
    page.wait_for_function(ALL_RUN, timeout=timeout)
    page.locator(IDLE).first.wait_for(timeout=timeout)


def _press(page, label: str, key: str, times: int = 1) -> None:
    """Move the slider whose label contains `label` with the keyboard."""
    slider = page.locator(".widget-slider").filter(has_text=label).first
    slider.scroll_into_view_if_needed()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(times):
        handle.press(key)


EXPLORER = "plots.find(p => p.title.includes('Mixtral-8x7B with E'))"  # chapter 01's
PARAMS = "plots.find(p => p.title.includes(' of the weights run per token'))"  # any model's
LOAD = "plots.find(p => p.title.includes('Slots per expert'))"  # chapter 05's load figure


def _pick(page, title: str) -> dict:
    """The plot on the page whose title contains `title`."""
    plots = [p for p in page.evaluate(READ_PLOTS) if title in p["title"]]
    assert len(plots) == 1, [p["title"] for p in page.evaluate(READ_PLOTS)]
    return plots[0]


def _wait_for(page, condition: str, timeout: int = 60_000) -> None:
    """Wait until `condition` (JS, over `plots` = READ_PLOTS()) holds."""
    # a figure whose traces have not arrived yet reads as "not yet", not as an error
    check = f"() => {{ try {{ const plots = ({READ_PLOTS})(); return {condition}; }} "
    check += "catch (e) { return false; } }"
    try:
        page.wait_for_function(check, timeout=timeout)
    except Exception:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "explorers_timeout.png"), full_page=True)
        raise


def _settled(page, timeout_s: float = 60.0) -> None:
    """Wait until the figures stop changing. Ten key presses are ten updates, each its own
    message to the kernel: the kernel reads idle between two of them, and one figure of an
    explorer can already show the next update while another still shows the last."""
    last, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page.locator(IDLE).first.wait_for(timeout=TIMEOUT_MS)
        now = page.evaluate(READ_PLOTS)
        if now == last:
            return
        last = now
        page.wait_for_timeout(1000)
    raise AssertionError(f"the figures were still changing after {timeout_s} s")


def _no_widget_errors(page, errors: list[str], console: list[str]) -> None:
    text = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in text
    assert page.locator(STDERR).count() == 0, page.locator(STDERR).first.inner_text()
    assert not [m for m in console if "widget" in m.lower() or "model" in m.lower()], console
    assert not [e for e in errors if "widget" in e.lower()], errors


def _open_lesson(browser, lab, path: str, workspace: str):
    page, errors = open_notebook(browser, lab, path, workspace)
    page.set_viewport_size({"width": 1400, "height": 900})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    return page, errors, console


def test_params_explorer_in_chapter_01(lab, browser):
    """K and E move the bars of chapter 01's explorer exactly as count_decoder_params says."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, errors, console = _open_lesson(browser, lab, "notebooks/01_dense_to_experts.ipynb",
                                         "params")  # fmt: skip
    _run_all(page)
    _wait_for(page, f"{PARAMS}.x[0][1] > 0", timeout=TIMEOUT_MS)
    _wait_until_all_run(page, TIMEOUT_MS)
    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".js-plotly-plot")).first
    explorer.scroll_into_view_if_needed()
    # the lesson's next cell drives the explorer from Python and leaves it on OLMoE-1B-7B (E = 64,
    # K = 8): the figure shows that state, then the learner picks Mixtral-8x7B in the dropdown
    _wait_for(page, f"{PARAMS}.title.startsWith('OLMoE-1B-7B with E = 64, K = 8')")
    explorer.locator(".widget-dropdown select").first.select_option("Mixtral-8x7B")
    _wait_for(page, f"{EXPLORER}.title.includes('E = 8, K = 2')")
    before = _pick(page, "Mixtral-8x7B with E")
    (active, total), shared = before["x"][0], before["x"][1]
    assert "E = 8, K = 2" in before["title"], before["title"]
    assert total == 4 * active  # E/K = 8/2: every expert stored, two of them run per token
    assert shared[0] == shared[1] > 0
    assert 46e9 < total + shared[1] < 47.5e9  # Mixtral-8x7B: 46.7B parameters
    explorer.screenshot(path=str(SCREENSHOTS / "01_params_explorer_before.png"))

    _press(page, "experts per token K", "ArrowRight")  # K: 2 -> 3
    _wait_for(page, f"{EXPLORER}.title.includes('K = 3')")
    after_k = _pick(page, "Mixtral-8x7B with E")
    assert after_k["x"][0] == [active * 3 // 2, total]  # one expert more per token, none stored
    assert after_k["x"][1] == shared

    _press(page, "experts E", "ArrowRight")  # E: 8 -> 16
    _wait_for(page, f"{EXPLORER}.title.includes('E = 16')")
    after_e = _pick(page, "Mixtral-8x7B with E")
    assert after_e["x"][0] == [active * 3 // 2, 2 * total]  # twice the experts stored
    mixtral = PUBLISHED_CONFIGS["Mixtral-8x7B"]
    router_growth = mixtral["n_layers"] * 8 * mixtral["hidden_size"]  # 8 more router rows a layer
    assert after_e["x"][1] == [shared[0] + router_growth] * 2  # the routers are shared weights
    explorer.screenshot(path=str(SCREENSHOTS / "01_params_explorer_after.png"))
    page.screenshot(path=str(SCREENSHOTS / "01_params_page.png"))
    _no_widget_errors(page, errors, console)
    page.close()


def _rows(plot: dict) -> dict[str, dict[str, int]]:
    """impl -> {"useful", "padding", "dropped"} from the rows figure (one trace per part)."""
    impls = plot["y"][0]
    return {
        impl: {
            part: int(plot["x"][i][j]) for i, part in enumerate(("useful", "padding", "dropped"))
        }
        for j, impl in enumerate(impls)
    }


def _check_rows(rows, *, T: int, K: int, E: int, C: int, max_count: int) -> None:
    N = T * K
    for impl in ("loop", "grouped_mm"):
        assert rows[impl] == {"useful": N, "padding": 0, "dropped": 0}, (impl, rows[impl])
    einsum = rows["einsum"]
    assert einsum["useful"] + einsum["padding"] == E * C  # every expert gets C rows
    assert einsum["useful"] + einsum["dropped"] == N  # a slot is kept or dropped
    padded = rows["padded_bmm"]
    assert padded["useful"] == N and padded["dropped"] == 0
    assert padded["useful"] + padded["padding"] == E * max_count  # padded to the busiest expert


def test_padding_explorer_in_chapter_05(lab, browser):
    """Skew and capacity factor move chapter 05's padding and drops as the formulas say."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, errors, console = _open_lesson(browser, lab, "notebooks/05_vectorised.ipynb", "padding")
    _run_all(page)
    _wait_for(page, f"{LOAD}.y[0].length === 16", timeout=TIMEOUT_MS)
    _wait_until_all_run(page, 2 * TIMEOUT_MS)  # the lesson's timings run after the explorer
    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".js-plotly-plot")).first
    explorer.scroll_into_view_if_needed()
    T, E, K = 1024, 16, 2

    def state():
        rows_plot, load_plot = _pick(page, "routed slots"), _pick(page, "Slots per expert")
        counts = [int(v) for v in load_plot["y"][0]]
        C = int(load_plot["y"][1][0])  # the dashed capacity line
        assert sum(counts) == T * K
        assert int(load_plot["y"][2][0]) == max(counts)  # the padded bmm's line
        return _rows(rows_plot), counts, C, rows_plot["title"]

    rows, counts, C, title = state()
    assert C == math.ceil(T * K / E * 1.25) == 160
    assert f"C = {C}" in title
    _check_rows(rows, T=T, K=K, E=E, C=C, max_count=max(counts))
    explorer.screenshot(path=str(SCREENSHOTS / "05_padding_explorer_before.png"))

    _press(page, "router skew s", "ArrowRight", times=10)  # skew 0.3 -> 1.3
    _wait_for(page, f"Math.max(...{LOAD}.y[0]) > {max(counts)}")
    _settled(page)
    skewed_rows, skewed_counts, skewed_C, _ = state()
    assert skewed_C == C  # the capacity depends on T, K, E and cf, not on the router
    _check_rows(skewed_rows, T=T, K=K, E=E, C=C, max_count=max(skewed_counts))
    assert skewed_rows["padded_bmm"]["padding"] > rows["padded_bmm"]["padding"]
    assert skewed_rows["einsum"]["dropped"] > rows["einsum"]["dropped"]
    explorer.screenshot(path=str(SCREENSHOTS / "05_padding_explorer_skewed.png"))

    _press(page, "capacity factor cf", "ArrowRight")  # cf 1.25 -> 1.30
    new_C = math.ceil(T * K / E * 1.30)
    _wait_for(page, f"{LOAD}.y[1][0] === {new_C}")
    _settled(page)
    cf_rows, cf_counts, cf_C, cf_title = state()
    assert cf_C == new_C == 167 and f"C = {new_C}" in cf_title
    assert cf_counts == skewed_counts  # the same routing, a larger buffer
    _check_rows(cf_rows, T=T, K=K, E=E, C=new_C, max_count=max(cf_counts))
    assert cf_rows["einsum"]["dropped"] <= skewed_rows["einsum"]["dropped"]
    page.screenshot(path=str(SCREENSHOTS / "05_padding_page.png"))
    _no_widget_errors(page, errors, console)
    page.close()
