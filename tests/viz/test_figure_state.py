"""The explorers' figures reach the page whole, however slowly the page loads plotly's code.

A plotly FigureWidget's data travels in updates sent after its comm opens; anywidget's front end
drops every update to a model whose module took over 2 s to load (see `LiveFigure` in
minimoe/viz/_widgets.py). A LiveFigure's module is a small loader: these tests check what its comm
opens with, that it holds every message plotly's front end listens to, and (with Node.js, where
installed) that the messages held while plotly's code loads reach plotly's model, in order.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from minimoe.viz._widgets import PLOTLY_MESSAGES, LiveFigure, _plotly_bundle
from minimoe.viz.capacity_explorer import capacity_explorer
from minimoe.viz.params_explorer import params_explorer
from minimoe.viz.routing_explorer import routing_explorer
from minimoe.viz.vectorised import padding_explorer


def test_the_comm_opens_with_the_small_loader_and_plotlys_bundle():
    fig = LiveFigure(go.Bar(x=[1, 2], y=[3, 4]))
    state = fig.get_state()  # what the comm-open message carries
    assert len(state["_esm"]) < 10_000  # the loader, not plotly's ~5 MB bundle
    assert state["_plotly_esm"] == str(go.FigureWidget._esm)  # plotly's own front end
    assert state["_plotly_esm_id"] == _plotly_bundle()[1] and len(state["_plotly_esm_id"]) == 16
    assert isinstance(fig, go.FigureWidget)  # the same Python API
    fig.data[0].y = [5, 6]
    assert list(fig.data[0].y) == [5, 6]


def test_the_loader_holds_every_message_plotlys_front_end_listens_to():
    listened = set(re.findall(r'"change:(_py2js_\w+)"', _plotly_bundle()[0]))
    assert listened, "plotly's bundle no longer listens to change:_py2js_* (a new protocol?)"
    assert listened <= set(PLOTLY_MESSAGES), listened - set(PLOTLY_MESSAGES)
    assert json.dumps(list(PLOTLY_MESSAGES)) in LiveFigure._esm


@pytest.mark.parametrize(
    "make",
    [
        params_explorer,
        routing_explorer,
        capacity_explorer,
        lambda: padding_explorer(n_tokens=256),
    ],
    ids=["params", "routing", "capacity", "padding"],
)
def test_every_figure_of_an_explorer_is_a_live_figure(make):
    explorer = make()
    assert explorer.figures
    for name, fig in explorer.figures.items():
        assert isinstance(fig, LiveFigure), name


def test_serving_explorers_figures_are_live_figures():
    from minimoe.serving import RoutingTrace
    from minimoe.viz.serving import cache_explorer, roofline_explorer

    trace = RoutingTrace(4, 2, 2)
    for _ in range(6):
        trace.append(torch.tensor([[0, 1], [2, 3]]))
    for explorer in (roofline_explorer(), cache_explorer(trace, "lru", 2, expert_mb=1.0)):
        assert explorer.figures
        for name, fig in explorer.figures.items():
            assert isinstance(fig, LiveFigure), name


def test_no_explorer_builds_a_plain_figure_widget():
    viz = Path(__file__).resolve().parents[2] / "minimoe" / "viz"
    plain = [
        f"{path.name}:{i}"
        for path in sorted(viz.glob("*.py"))
        if path.name != "_widgets.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "FigureWidget(" in line and not line.lstrip().startswith("#")
    ]
    assert not plain, f"build figures as LiveFigure(...), not go.FigureWidget(...): {plain}"


# Node runs the loader against a fake anywidget model (Backbone-style on/off/get) and a fake
# plotly bundle whose model records every message it reads, as plotly's FigureModel does
# (plotly.js widget bundle: `model.on("change:_py2js_restyle", () => this.do_restyle())`, and
# do_restyle reads `model.get("_py2js_restyle")`).
NODE_SCRIPT = r"""
const loader = await import("data:text/javascript," + encodeURIComponent(LOADER));
const listeners = new Map(), attrs = new Map();
const model = {
  get: (name) => attrs.has(name) ? attrs.get(name) : null,
  set: (name, value) => attrs.set(name, value),
  save_changes() {}, send() {},
  on: (event, cb) => listeners.set(event, [...(listeners.get(event) ?? []), cb]),
  off: (event, cb) => listeners.set(event, (listeners.get(event) ?? []).filter((c) => c !== cb)),
};
function message(name, value) {  // what ipywidgets does on an update: set, then back to null
  for (const v of [value, null]) {
    attrs.set(name, v);
    for (const cb of listeners.get(`change:${name}`) ?? []) cb();
  }
}
const seen = [], rendered = [];
let release;
const bundle = new Promise((resolve) => { release = resolve; });
globalThis[Symbol.for("minimoe.plotly-widget-bundles")] = new Map([["ID", bundle]]);
attrs.set("_plotly_esm_id", "ID");
const plotly = () => ({
  initialize({ model }) {
    for (const name of ["_py2js_restyle", "_py2js_relayout", "_py2js_addTraces"]) {
      model.on(`change:${name}`, () => {
        const v = model.get(name);
        if (v !== null) seen.push([name, v.id]);
      });
    }
  },
  render({ el }) { rendered.push([el, seen.length]); },
});
const widget = loader.default();
widget.initialize({ model });
const view = widget.render({ model, el: "view" });  // a view waits for plotly's code
message("_py2js_addTraces", { id: 1 });
message("_py2js_restyle", { id: 2 });
message("_py2js_relayout", { id: 3 });
message("_py2js_restyle", { id: 4 });
const before = seen.length;
release({ default: plotly });
await view;
message("_py2js_restyle", { id: 5 });  // after the load: straight to plotly's model
console.log(JSON.stringify({ before, seen, rendered }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_messages_held_while_plotly_loads_reach_its_model_in_order():
    script = f"const LOADER = {json.dumps(LiveFigure._esm)};\n{NODE_SCRIPT}"
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["before"] == 0  # nothing reaches plotly's model before its code is loaded
    assert out["seen"] == [
        ["_py2js_addTraces", 1],
        ["_py2js_restyle", 2],
        ["_py2js_relayout", 3],
        ["_py2js_restyle", 4],
        ["_py2js_restyle", 5],
    ]
    assert out["rendered"] == [["view", 4]]  # drawn after the held messages were handed over
