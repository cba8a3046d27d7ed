"""Shared pieces of every figure: the one expert palette, readable text colours, and the base of
the interactive explorers (controls, figures, timed in-place updates), whose figures are
`LiveFigure`s (plotly FigureWidgets whose updates reach the page however slowly it loads them).

The palette is the same in every figure of the course, so expert 3 has one colour in a heatmap,
a load bar and a coloured token. Its first seven colours are Okabe & Ito's colour-blind-safe set
(Okabe and Ito 2008, "Color Universal Design"), the next nine Paul Tol's "muted" scheme
(personal.sron.nl/~pault); experts 16..63 reuse those 16 hues lighter, darker, and lighter
still. An expert's colour depends on its index only, never on how many experts there are.
Beyond 64 experts the colours repeat. Colour is never the only cue: figures also mark ranks by
marker shape and dropped slots by hatching or an outline.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import time
from collections.abc import Callable

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
import traitlets

BASE_HUES = (
    "#0072B2",  # blue          (Okabe-Ito)
    "#E69F00",  # orange        (Okabe-Ito)
    "#009E73",  # bluish green  (Okabe-Ito)
    "#CC79A7",  # reddish purple(Okabe-Ito)
    "#56B4E9",  # sky blue      (Okabe-Ito)
    "#D55E00",  # vermillion    (Okabe-Ito)
    "#F0E442",  # yellow        (Okabe-Ito)
    "#332288",  # indigo        (Tol muted)
    "#117733",  # green         (Tol muted)
    "#882255",  # wine          (Tol muted)
    "#44AA99",  # teal          (Tol muted)
    "#999933",  # olive         (Tol muted)
    "#AA4499",  # purple        (Tol muted)
    "#DDCC77",  # sand          (Tol muted)
    "#88CCEE",  # cyan          (Tol muted)
    "#CC6677",  # rose          (Tol muted)
)
# (mix with, fraction) for experts 0-15, 16-31, 32-47, 48-63
_VARIANTS = ((None, 0.0), ("#FFFFFF", 0.45), ("#000000", 0.35), ("#FFFFFF", 0.7))
PALETTE_SIZE = len(BASE_HUES) * len(_VARIANTS)  # 64

KEPT_TEXT = "kept"
DROPPED_COLOUR = "#BBBBBB"  # a grey no expert uses: dropped slots, lost tokens
DROPPED_EDGE = "#444444"
EMPTY_COLOUR = "#F4F4F4"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    if len(h) != 6:
        raise ValueError(f"expected a colour like '#1A2B3C', got {hex_colour!r}")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _mix(hex_colour: str, other: str, fraction: float) -> str:
    a, b = _rgb(hex_colour), _rgb(other)
    return "#{:02X}{:02X}{:02X}".format(
        *(round(x + (y - x) * fraction) for x, y in zip(a, b, strict=True))
    )


def expert_colour(expert: int) -> str:
    """The colour of one expert, as '#RRGGBB' (the same in every figure; repeats after 64)."""
    if expert < 0:
        raise ValueError(f"expert index must be >= 0, got {expert}")
    expert %= PALETTE_SIZE
    hue = BASE_HUES[expert % len(BASE_HUES)]
    other, fraction = _VARIANTS[expert // len(BASE_HUES)]
    return hue if other is None else _mix(hue, other, fraction)


def pale(colour: str, fraction: float = 0.55) -> str:
    """A paler tint of a colour (mixed with white), for second and later choices."""
    return _mix(colour, "#FFFFFF", fraction)


def expert_colours(n_experts: int) -> list[str]:
    """The colours of experts 0 .. n_experts-1 (`expert_colour` of each)."""
    if n_experts < 0:
        raise ValueError(f"n_experts must be >= 0, got {n_experts}")
    return [expert_colour(e) for e in range(n_experts)]


def relative_luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of a colour, in [0, 1]."""

    def linear(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in _rgb(hex_colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2 contrast ratio between two colours (1 = none, 21 = black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background`."""
    black, white = "#000000", "#FFFFFF"
    return (
        black if contrast_ratio(background, black) >= contrast_ratio(background, white) else white
    )


# plotly's FigureWidget (plotly 7.1, plotly/basewidget.py) is an anywidget: its front end is one
# ES module of ~5 MB (plotly.js inside), sent in the widget's `_esm` and imported by the page
# once per figure. anywidget 0.11's front end (packages/anywidget/src/runtime.ts) gives a model
# 2 s to import its module and run its `initialize`; past that the model's `ready` promise is
# rejected, and every later update to it (its `_handle_comm_msg` awaits `ready`) is dropped
# without a word. A FigureWidget's data always travels in such updates: its comm opens with
# `_widget_data = []` and `_widget_layout = {}`, then its constructor assigns both, and every
# change after is a `_py2js_*` message. On a busy machine the 5 MB import outlasts the 2 s, and
# the figure stays empty (data [], plotly's default layout) and deaf to every control.
#
# A LiveFigure keeps plotly's front end and Python side unchanged, and only loads it otherwise:
# its `_esm` is the small module below, which is ready at once; it imports plotly's bundle (sent
# in `_plotly_esm`) in the background, once per page, holds the `_py2js_*` messages that arrive
# meanwhile, and hands them, in order, to plotly's model as soon as plotly's code is there.
# A view waits for that before it draws.
_LOADER_ESM = """
const MESSAGES = %(messages)s;  // plotly's Python -> JS messages: the `_py2js_*` traits
const BUNDLES = Symbol.for("minimoe.plotly-widget-bundles");

function plotlyBundle(model) {
  // one import per page and plotly version, shared by every figure (a blob: URL is never cached)
  const bundles = (globalThis[BUNDLES] ??= new Map());
  const id = model.get("_plotly_esm_id");
  if (!bundles.has(id)) {
    const source = new Blob([model.get("_plotly_esm")], { type: "text/javascript" });
    const url = URL.createObjectURL(source);
    bundles.set(id, import(url).finally(() => URL.revokeObjectURL(url)));
  }
  return bundles.get(id);
}

export default () => {
  let plotly;  // plotly's own {initialize, render} for this model, once its bundle is loaded
  let loaded;
  return {
    initialize({ model }) {
      const held = [];  // [name, value] of each message, in the order they arrived
      const holders = MESSAGES.map((name) => {
        const hold = () => {
          const value = model.get(name);
          if (value !== null) held.push([name, value]);
        };
        model.on(`change:${name}`, hold);
        return [name, hold];
      });
      loaded = plotlyBundle(model).then((module) => {
        for (const [name, hold] of holders) model.off(`change:${name}`, hold);
        // plotly's model reads each message with model.get(name) when its change event fires:
        // while one held message is handed over, get(name) returns it
        const handing = new Map();
        let listeners = new Map();  // event -> plotly's model's callbacks (until handed over)
        const seen = {
          ...model,
          get: (name) => (handing.has(name) ? handing.get(name) : model.get(name)),
          on: (event, callback) => {
            model.on(event, callback);
            listeners?.set(event, [...(listeners.get(event) ?? []), callback]);
          },
        };
        plotly = typeof module.default === "function" ? module.default() : module.default;
        plotly.initialize({ model: seen });
        for (const [name, value] of held) {
          handing.set(name, value);
          try {
            for (const callback of listeners.get(`change:${name}`) ?? []) callback();
          } finally {
            handing.delete(name);
          }
        }
        listeners = null;
      });
    },
    async render({ model, el }) {
      await loaded;
      return plotly.render({ model, el });
    },
  };
};
"""

PLOTLY_MESSAGES = tuple(
    sorted(name for name in go.FigureWidget.class_trait_names() if name.startswith("_py2js_"))
)


@functools.cache
def _plotly_bundle() -> tuple[str, str]:
    """plotly's FigureWidget front end (the ES module its `_esm` holds), and a short id of it."""
    source = str(go.FigureWidget._esm)
    return source, hashlib.sha256(source.encode()).hexdigest()[:16]


class LiveFigure(go.FigureWidget):
    """A plotly `go.FigureWidget` whose first updates are never lost on a slow page.

    The same Python API and the same plotly front end as `go.FigureWidget`; only the way the page
    loads that front end differs (see `_LOADER_ESM` above): the widget is ready at once, plotly's
    bundle is imported once per page, and updates that arrive before it are replayed in order.
    An explorer builds its figures as `LiveFigure(...)` where it would call `go.FigureWidget(...)`.
    """

    _esm = _LOADER_ESM % {"messages": json.dumps(list(PLOTLY_MESSAGES))}
    _plotly_esm = traitlets.Unicode().tag(sync=True)
    _plotly_esm_id = traitlets.Unicode().tag(sync=True)

    @traitlets.default("_plotly_esm")
    def _default_plotly_esm(self) -> str:
        return _plotly_bundle()[0]

    @traitlets.default("_plotly_esm_id")
    def _default_plotly_esm_id(self) -> str:
        return _plotly_bundle()[1]


class Explorer(widgets.VBox):
    """An interactive figure: a VBox with named controls and plotly figures, updated in place.

    Attributes:
        controls: name -> ipywidgets control; setting `.value` updates the figures at once.
        figures: name -> `LiveFigure` (a plotly `go.FigureWidget`); created once, their traces
            updated in place.
        last_update_ms: how long the last interaction's update took, in milliseconds.
        update_ms: every update's time, per control name (what `minimoe.bench.widgets` reads).
    """

    def __init__(self, children, controls: dict, figures: dict, **kwargs) -> None:
        super().__init__(children, **kwargs)
        self.controls = controls
        self.figures = figures
        self.last_update_ms = float("nan")
        self.update_ms: dict[str, list[float]] = {name: [] for name in controls}
        self._hold = False

    def _repr_mimebundle_(self, **kwargs):
        # In the course's website there is no kernel to move the controls: show the figures as
        # they are now, interactive plotly figures still (zoom, hover), and say how to run it live.
        if in_book_build():
            return {"text/html": static_snapshot(self), "text/plain": repr(self)}
        return super()._repr_mimebundle_(**kwargs)

    def _watch(self, update: Callable[[], None]) -> None:
        """Call `update` (timed) whenever any control's value changes."""
        for name, control in self.controls.items():
            control.observe(lambda _change, n=name: self._timed(n, update), names="value")

    def _timed(self, name: str, update: Callable[[], None]) -> None:
        if self._hold:
            return
        t0 = time.perf_counter()
        # the tensors here are tiny: on a busy CPU, waiting for a second OpenMP thread costs
        # more than the work, so each update runs on one thread (and restores the setting)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            update()
        finally:
            torch.set_num_threads(threads)
        ms = (time.perf_counter() - t0) * 1e3
        self.last_update_ms = ms
        self.update_ms.setdefault(name, []).append(ms)


def column_layout() -> widgets.Layout:
    """The controls' column keeps its width: beside a figure it would otherwise be squeezed and
    clip the dropdowns. Room for the 26em controls."""
    return widgets.Layout(flex="0 0 auto", width="27.5em", overflow="visible")


def control_layout(description_width: str = "11em") -> dict:
    """Common keyword arguments of the explorers' controls (a readable, aligned label column)."""
    return dict(
        style={"description_width": description_width},
        layout=widgets.Layout(width="26em"),
        continuous_update=True,
    )


def note(html: str) -> widgets.HTML:
    """A small grey explanatory line under the controls."""
    return widgets.HTML(f"<div style='color:#555;font-size:0.9em;line-height:1.4'>{html}</div>")


# The course's website (`make book`, minimoe.course.book) executes the lessons with this variable
# set: no kernel stays behind the pages, so widgets would show as nothing.
BOOK_ENV = "MINIMOE_BOOK"
LIVE_NOTE = (
    "A snapshot: the controls of this explorer need a running kernel. To move them, run the "
    "course locally: <code>make lab</code> opens this notebook in JupyterLab."
)


def in_book_build() -> bool:
    """Whether this kernel executes the lessons for the course's website (MINIMOE_BOOK=1)."""
    return os.environ.get(BOOK_ENV) == "1"


def _figure_html(fig) -> str:
    """A plotly figure as a <div> and the script that draws it with the page's own plotly.js
    (the website serves plotly.min.js itself: no CDN, no MathJax from the network)."""
    import plotly.io as pio

    return pio.to_html(
        go.Figure(fig), include_plotlyjs=False, include_mathjax=False, full_html=False,
        default_width="100%", validate=False,
    )  # fmt: skip


def static_snapshot(widget) -> str:
    """HTML of a widget tree as it stands: figures drawn, HTML shown, each control's value as
    text, and the note on how to run it live. What the website shows in place of an explorer."""

    def walk(w) -> str:
        if isinstance(w, go.FigureWidget):
            return _figure_html(w)
        if isinstance(w, widgets.Box):
            return "<div>" + "".join(walk(c) for c in w.children) + "</div>"
        if isinstance(w, (widgets.HTML, widgets.HTMLMath)):
            return f"<div>{w.value}</div>"
        if isinstance(w, widgets.ValueWidget) and getattr(w, "description", ""):
            value = w.value if not isinstance(w.value, float) else round(w.value, 4)
            return (
                "<div class='minimoe-control'>"
                f"{html.escape(str(w.description))} <b>{html.escape(str(value))}</b></div>"
            )
        return ""

    note = f"<div class='minimoe-live-note'>{LIVE_NOTE}</div>"
    return f"<div class='minimoe-snapshot'>{note}{walk(widget)}</div>"


def use_book_renderer() -> None:
    """Make every plotly figure shown in this kernel render for the website (called on import
    when MINIMOE_BOOK=1): plotly's own HTML renderers load plotly.js or MathJax from a CDN."""
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    class BookRenderer(MimetypeRenderer):
        """The figure's HTML, drawn by the page's own plotly.js."""

        def to_mimebundle(self, fig_dict):
            return {"text/html": _figure_html(fig_dict)}

    pio.renderers["minimoe_book"] = BookRenderer()
    pio.renderers.default = "minimoe_book"


if in_book_build():
    use_book_renderer()
