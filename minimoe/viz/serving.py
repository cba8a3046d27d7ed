"""The serving explorers of chapter 10: the decode roofline against the batch size, and the expert
cache replaying a real routing trace.

    from minimoe.viz.serving import roofline_explorer, cache_explorer
    roofline_explorer()        # model, batch size, GPU, context length
    cache_explorer(trace)      # eviction policy and cache size, on a `RoutingTrace`

`roofline_explorer` draws, for one of `minimoe.serving.REAL_MODELS`, the arithmetic intensity of
a decode step against the batch size B (FLOPs per byte read), beside a dense model of the same
active parameters (the MoE shape with E = K) and the GPU's ridge point: below the ridge a step is
memory-bound and its time is bytes / bandwidth; above it, compute-bound. A second figure splits
the bytes of the chosen batch's step into the weights every step reads, the routed experts the
batch touches and the KV cache. Every number is `minimoe.serving.decode_step_breakdown`,
`decode_step_flops`, `decode_step_time` and `compute_bound_batch`; this module only draws.

`cache_explorer` replays the trace's expert requests (`minimoe.serving.flatten_trace`: token by
token, layer by layer, k in the router's order) through `lru_hits`, `lfu_hits`, `belady_hits` or
the activation-aware prefetcher (`minimoe.serving.simulate.simulate(trace, "prefetch", N)`, the
cache the offloaded runtime runs) for the chosen cache size, and shows the hit rate, the
layer-by-token picture of hits and misses, and every policy's hit rate and experts loaded per
request against the cache size. Loads are shown beside hits because the prefetcher also loads
experts nobody asked for: its hit rate can beat Belady's while it moves more bytes than LRU. A
policy that loads only on a miss loads 1 - hit rate experts per request. Colours: a hit is the
course's blue, a miss vermillion (Okabe-Ito, both told apart with colour-blind vision), a
(token, layer) whose K requests split is their mix.
"""

from __future__ import annotations

import dataclasses
import functools
import html

import ipywidgets as widgets
import torch

from minimoe.serving import (
    GPUS,
    REAL_MODELS,
    MoEShape,
    RoutingTrace,
    arithmetic_intensity,
    belady_hits,
    compute_bound_batch,
    decode_step_breakdown,
    decode_step_flops,
    decode_step_time,
    flatten_trace,
    lfu_hits,
    lru_hits,
    real_model_shape,
)
from minimoe.serving.simulate import simulate
from minimoe.viz._widgets import (
    Explorer,
    LiveFigure,
    _mix,
    column_layout,
    control_layout,
    expert_colour,
    note,
)

BATCHES = tuple(2**i for i in range(13))  # 1 .. 4096 sequences
CONTEXTS = (0, 512, 2048, 8192, 32768)
HIT_COLOUR = expert_colour(0)  # blue
MISS_COLOUR = expert_colour(5)  # vermillion
PARTS = (  # (key of decode_step_breakdown, label, colour)
    ("always", "attention, dense FFN, shared experts, routers, head", "#999999"),
    ("experts", "routed experts touched", expert_colour(0)),
    ("kv", "KV cache", expert_colour(1)),
)
POLICIES = ("lru", "lfu", "prefetch", "belady")
HIT_FUNCTIONS = {"lru": lru_hits, "lfu": lfu_hits, "belady": belady_hits}  # load only on a miss
POLICY_LABELS = {
    "lru": "LRU",
    "lfu": "LFU",
    "prefetch": "prefetch (LRU + next layer)",
    "belady": "Belady (optimal, knows the future)",
}
POLICY_TITLES = {"lru": "LRU", "lfu": "LFU", "prefetch": "Prefetch", "belady": "Belady"}
POLICY_COLOURS = {
    "lru": expert_colour(0),
    "lfu": expert_colour(2),
    "prefetch": expert_colour(3),
    "belady": "#000000",
}


@functools.cache
def model_shape(name: str) -> MoEShape:
    """`real_model_shape`, built once per model (it reads a transformers configuration)."""
    return real_model_shape(name)


def dense_equivalent(shape: MoEShape) -> MoEShape:
    """The same model with only the K experts a token uses (E = K): a dense model of the same
    active parameters (but for the router's E - K unused rows), which reads every weight it has
    at every step."""
    return dataclasses.replace(shape, name=f"{shape.name} (dense, same active)",
                               n_experts=shape.top_k)  # fmt: skip


def roofline_curve(shape: MoEShape, context_len: int, batches=BATCHES) -> list[float]:
    """The decode step's arithmetic intensity (FLOP/byte) at each batch size."""
    return [arithmetic_intensity(shape, b, context_len) for b in batches]


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


class RooflineExplorer(Explorer):
    """The widget `roofline_explorer` returns (see the module docstring).

    Attributes:
        controls: "model", "gpu" (Dropdown), "batch", "context" (SelectionSlider).
        figures: "roofline" (intensity against B: the MoE model, its dense equivalent, the ridge,
            the chosen batch) and "bytes" (the chosen step's bytes by kind).
        result: the numbers drawn last: breakdown, flops, intensity, time_s, tokens_per_s,
            bound ("memory" or "compute"), compute_bound_batch.
    """

    def __init__(self, model: str, gpu: str, batch: int, context_len: int) -> None:
        layout = control_layout("9em")
        controls = {
            "model": widgets.Dropdown(options=list(REAL_MODELS), value=model, description="model",
                                      **layout),
            "gpu": widgets.Dropdown(options=list(GPUS), value=gpu, description="GPU", **layout),
            "batch": widgets.SelectionSlider(options=BATCHES, value=batch,
                                             description="batch size B", **layout),
            "context": widgets.SelectionSlider(options=CONTEXTS, value=context_len,
                                               description="context length", **layout),
        }  # fmt: skip
        # figures are built empty and filled with add_*; _update sets their data
        roofline = LiveFigure()
        roofline.add_scatter(name="MoE", mode="lines+markers", line={"color": expert_colour(0)})
        # named in _update: a name set here did not reach the legend in JupyterLab
        roofline.add_scatter(mode="lines",
                             line={"color": "#555555", "dash": "dash"})  # fmt: skip
        roofline.add_scatter(name="GPU ridge (compute-bound above)", mode="lines",
                             line={"color": MISS_COLOUR, "dash": "dot"})  # fmt: skip
        roofline.add_scatter(name="chosen batch", mode="markers", showlegend=False,
                             marker={"size": 14, "color": expert_colour(0),
                                     "symbol": "circle-open", "line": {"width": 3}})  # fmt: skip
        roofline.update_layout(
            template="plotly_white", height=340, width=620,
            margin={"l": 70, "r": 20, "t": 50, "b": 50},
            xaxis={"type": "log", "title": "batch size B (sequences)",
                   "tickvals": [1, 4, 16, 64, 256, 1024, 4096]},
            yaxis={"type": "log", "title": "FLOPs per byte read"},
            legend={"x": 0.99, "xanchor": "right", "y": 0.02, "yanchor": "bottom",
                    "bgcolor": "rgba(255,255,255,0.8)", "font": {"size": 11}},
            modebar_orientation="v",
        )  # fmt: skip
        bars = LiveFigure()
        for _, label, colour in PARTS:
            bars.add_bar(name=label, x=[0.0], y=["step"], orientation="h", marker_color=colour,
                         hovertemplate=label + ": %{x:.3g} GB<extra></extra>")  # fmt: skip
        bars.update_layout(
            template="plotly_white", barmode="stack", height=200, width=620,
            margin={"l": 50, "r": 20, "t": 40, "b": 40}, xaxis_title="GB read per step",
            legend={"orientation": "h", "y": -0.5, "font": {"size": 11}},
            modebar_orientation="v",
        )  # fmt: skip
        self.summary = widgets.HTML()
        help_text = note(
            "A decode step reads the weights once for the whole batch and every sequence's KV "
            "cache; it does 2 FLOPs per active weight per token. Below the ridge it is "
            "memory-bound. Numbers: minimoe.serving.decode_step_breakdown and decode_step_time."
        )
        left = widgets.VBox([help_text, *controls.values(), self.summary], layout=column_layout())
        super().__init__(
            [widgets.HBox([left, widgets.VBox([roofline, bars])])],
            controls=controls,
            figures={"roofline": roofline, "bytes": bars},
        )
        self._watch(self._update)
        self._timed("model", self._update)

    def _update(self) -> None:
        name, gpu = self.controls["model"].value, GPUS[self.controls["gpu"].value]
        B, S = self.controls["batch"].value, self.controls["context"].value
        shape = model_shape(name)
        moe = roofline_curve(shape, S)
        dense = roofline_curve(dense_equivalent(shape), S)
        parts = decode_step_breakdown(shape, B, S)
        flops = decode_step_flops(shape, B, S)
        intensity = flops / parts["total"]
        time_s = decode_step_time(shape, gpu, B, S)
        knee = compute_bound_batch(shape, gpu, S)
        bound = "compute" if intensity >= gpu.ridge else "memory"
        self.result = {"breakdown": parts, "flops": flops, "intensity": intensity,
                       "time_s": time_s, "tokens_per_s": B / time_s, "bound": bound,
                       "compute_bound_batch": knee}  # fmt: skip
        fig = self.figures["roofline"]
        with fig.batch_update():
            fig.data[0].update(x=list(BATCHES), y=moe, name=f"{name} (MoE)")
            fig.data[1].update(x=list(BATCHES), y=dense, name="dense, same active params")
            fig.data[2].update(x=[BATCHES[0], BATCHES[-1]], y=[gpu.ridge, gpu.ridge],
                               name=f"{gpu.name} ridge: {gpu.ridge:.0f} FLOP/byte")  # fmt: skip
            fig.data[3].update(x=[B], y=[intensity])
            fig.layout.title = f"{name}: decode intensity against the batch (context {S})"
        bars = self.figures["bytes"]
        with bars.batch_update():
            for trace, (key, _, _) in zip(bars.data, PARTS):
                trace.x = [parts[key] / 1e9]
            bars.layout.title = f"B = {B}: {_bytes(parts['total'])} read per step"
        touched = parts["experts"] / max(shape.n_moe_layers * shape.expert_params * 2.0, 1.0)
        knee_text = (
            f"compute-bound from B = {knee}"
            if knee is not None
            else "never compute-bound (the KV cache grows with B as fast as the FLOPs)"
        )
        self.summary.value = (
            "<div style='line-height:1.6;margin-top:6px'>"
            f"experts touched per layer: <b>{touched:.1f}</b> of {shape.n_experts} "
            f"(K = {shape.top_k})<br>intensity <b>{intensity:.0f}</b> FLOP/byte: "
            f"<b>{bound}-bound</b><br>step ≥ <b>{time_s * 1e3:.2f} ms</b>, at most "
            f"<b>{B / time_s:,.0f}</b> tokens/s on one {html.escape(gpu.name)}<br>"
            f"{knee_text}</div>"
        )


def roofline_explorer(
    model: str = "Mixtral-8x7B", gpu: str = "H100 SXM", batch: int = 1, context_len: int = 512
) -> RooflineExplorer:
    """An interactive decode roofline: intensity against the batch size for a real model.

    Args:
        model: one of `minimoe.serving.REAL_MODELS`.
        gpu: a key of `minimoe.serving.GPUS`.
        batch: the batch shown first, one of `BATCHES`.
        context_len: the cached positions per sequence, one of `CONTEXTS`.
    """
    if model not in REAL_MODELS:
        raise ValueError(f"model must be one of {list(REAL_MODELS)}, got {model!r}")
    if gpu not in GPUS:
        raise ValueError(f"gpu must be one of {list(GPUS)}, got {gpu!r}")
    if batch not in BATCHES:
        raise ValueError(f"batch must be one of {BATCHES}, got {batch!r}")
    if context_len not in CONTEXTS:
        raise ValueError(f"context_len must be one of {CONTEXTS}, got {context_len!r}")
    return RooflineExplorer(model, gpu, batch, context_len)


# --- the expert cache ------------------------------------------------------------------------------


def replay(trace: RoutingTrace, policy: str, cache_size: int, keys=None) -> tuple[list[bool], int]:
    """(hits, loads) of one replay: one bool per request in the runtime's order, and the experts
    loaded (the misses, plus the prefetcher's prefetches)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    if policy == "prefetch":
        sim = simulate(trace, policy, cache_size)
        return sim.hits, sim.loads
    hits = HIT_FUNCTIONS[policy](flatten_trace(trace) if keys is None else keys, cache_size)
    return hits, len(hits) - sum(hits)


def hits_TLK(trace: RoutingTrace, policy: str, cache_size: int) -> torch.Tensor:
    """Each request's hit (bool) for a policy and cache size, as (T, L, K) like the trace."""
    hits, _ = replay(trace, policy, cache_size)
    return torch.tensor(hits, dtype=torch.bool).view(len(trace), trace.n_layers, trace.top_k)


def hit_rate_curve(trace: RoutingTrace, policy: str, sizes) -> list[float]:
    """The hit rate of a policy at each cache size (0.0 for an empty trace)."""
    return policy_curves(trace, policy, sizes)[0]


def policy_curves(trace: RoutingTrace, policy: str, sizes) -> tuple[list[float], list[float]]:
    """(hit rate, experts loaded per request) of a policy at each cache size (0.0 for an empty
    trace)."""
    keys = flatten_trace(trace)
    n = max(len(keys), 1)
    rates, loads = [], []
    for size in sizes:
        hits, loaded = replay(trace, policy, size, keys)
        rates.append(sum(hits) / n)
        loads.append(loaded / n)
    return rates, loads


class CacheExplorer(Explorer):
    """The widget `cache_explorer` returns (see the module docstring).

    Attributes:
        controls: "policy" (Dropdown), "cache_size" (IntSlider, 0 .. L*E experts).
        figures: "hits" (layer x token: the share of each (token, layer)'s K requests that hit),
            "curve" (hit rate against cache size, every policy, the chosen point marked) and
            "loads" (experts loaded per request against cache size, the same way).
        hits_TLK: the chosen policy's hits, (T, L, K) bool.
        hit_rate: their mean.
        loads: experts the chosen policy loaded (misses plus prefetches).
        mb_moved: loads * expert_mb.
    """

    def __init__(self, trace: RoutingTrace, policy: str, cache_size: int, expert_mb: float,
                 max_tokens: int) -> None:  # fmt: skip
        self.trace = trace
        self.expert_mb = expert_mb
        L, E, K = trace.n_layers, trace.n_experts, trace.top_k
        self.sizes = list(range(L * E + 1))
        both = {p: policy_curves(trace, p, self.sizes) for p in POLICIES}
        self.curves = {p: rates for p, (rates, _) in both.items()}
        self.load_curves = {p: loads for p, (_, loads) in both.items()}
        self.max_tokens = max_tokens
        layout = control_layout("9em")
        controls = {
            "policy": widgets.Dropdown(options=[(POLICY_LABELS[p], p) for p in POLICIES],
                                       value=policy, description="policy", **layout),
            "cache_size": widgets.IntSlider(min=0, max=L * E, value=cache_size,
                                            description="cache (experts)", **layout),
        }  # fmt: skip
        shown = min(len(trace), max_tokens)
        colours = [[0.0, MISS_COLOUR], [0.5, _mix(MISS_COLOUR, HIT_COLOUR, 0.5)],
                   [1.0, HIT_COLOUR]]  # fmt: skip
        heat = LiveFigure()  # built empty, then filled (see RooflineExplorer)
        heat.add_heatmap(z=[[0.0] * shown] * L, x=list(range(shown)), y=list(range(L)),
                         zmin=0, zmax=1, colorscale=colours, xgap=1, ygap=2,
                         colorbar={"title": {"text": "hits / K", "side": "right"},
                                   "tickvals": [0, 0.5, 1],
                                   "ticktext": ["all miss", "half hit", "all hit"],
                                   "len": 0.9, "thickness": 14},
                         hovertemplate="token %{x}, layer %{y}: %{z:.0%} of K hit<extra></extra>")  # fmt: skip
        heat.update_layout(
            template="plotly_white", height=190 + 28 * L, width=600,
            margin={"l": 60, "r": 20, "t": 50, "b": 50},
            yaxis={"title": "MoE layer", "dtick": 1, "autorange": "reversed"},
            modebar_orientation="v",
        )  # fmt: skip
        curve = LiveFigure()
        for p in POLICIES:
            curve.add_scatter(x=self.sizes, y=self.curves[p], mode="lines", name=POLICY_LABELS[p],
                              line={"color": POLICY_COLOURS[p],
                                    "dash": "dot" if p == "belady" else "solid"})  # fmt: skip
        curve.add_scatter(x=[0], y=[0], mode="markers", name="chosen", showlegend=False,
                          marker={"size": 13, "symbol": "circle-open", "line": {"width": 3},
                                  "color": "#000000"})  # fmt: skip
        curve.update_layout(
            template="plotly_white", height=280, width=600,
            margin={"l": 60, "r": 20, "t": 40, "b": 50},
            xaxis_title=f"cache size (experts, of L·E = {L * E})",
            yaxis={"title": "hit rate", "range": [0, 1.02], "tickformat": ".0%"},
            legend={"x": 0.99, "xanchor": "right", "y": 0.02, "yanchor": "bottom",
                    "bgcolor": "rgba(255,255,255,0.8)", "font": {"size": 11}},
            title="hit rate against cache size, every policy",
            modebar_orientation="v",
        )  # fmt: skip
        loads = LiveFigure()
        for p in POLICIES:
            loads.add_scatter(x=self.sizes, y=self.load_curves[p], mode="lines",
                              name=POLICY_LABELS[p], showlegend=False,
                              line={"color": POLICY_COLOURS[p],
                                    "dash": "dot" if p == "belady" else "solid"},
                              hovertemplate=f"{POLICY_TITLES[p]}, %{{x}} cached: %{{y:.2f}} "
                                            "loads per request<extra></extra>")  # fmt: skip
        loads.add_scatter(x=[0], y=[0], mode="markers", name="chosen", showlegend=False,
                          marker={"size": 13, "symbol": "circle-open", "line": {"width": 3},
                                  "color": "#000000"})  # fmt: skip
        top = max(max(v) for v in self.load_curves.values()) if self.load_curves else 1.0
        loads.update_layout(
            template="plotly_white", height=240, width=600,
            margin={"l": 60, "r": 20, "t": 40, "b": 50},
            xaxis_title=f"cache size (experts, of L·E = {L * E})",
            yaxis={"title": "loads / request", "range": [0, max(1.0, top) * 1.05]},
            title="experts loaded per request (misses + prefetches): the bytes moved",
            modebar_orientation="v",
        )  # fmt: skip
        self.summary = widgets.HTML()
        help_text = note(
            f"The trace: {len(trace)} tokens × {L} MoE layers × K = {K} requests, keys "
            "layer·E + expert in the runtime's order. Hits from minimoe.serving.lru_hits, "
            "lfu_hits, belady_hits and the prefetcher of minimoe.serving.simulate, which also "
            "loads experts nobody asked for: compare loads, not only hit rates."
        )
        left = widgets.VBox([help_text, *controls.values(), self.summary], layout=column_layout())
        super().__init__(
            [widgets.HBox([left, widgets.VBox([heat, curve, loads])])],
            controls=controls,
            figures={"hits": heat, "curve": curve, "loads": loads},
        )
        self._watch(self._update)
        self._timed("policy", self._update)

    def _update(self) -> None:
        policy, size = self.controls["policy"].value, self.controls["cache_size"].value
        hit_list, self.loads = replay(self.trace, policy, size)
        hits = self.hits_TLK = torch.tensor(hit_list, dtype=torch.bool).view(
            len(self.trace), self.trace.n_layers, self.trace.top_k
        )
        n = hits.numel()
        self.hit_rate = float(hits.float().mean()) if n else 0.0
        shown = hits[: self.max_tokens].float().mean(-1)  # (T, L): share of K that hit
        heat = self.figures["hits"]
        with heat.batch_update():
            heat.data[0].z = shown.t().tolist()
            heat.layout.title = (
                f"{POLICY_TITLES[policy]}, {size} experts cached: hit rate {self.hit_rate:.1%}"
            )
            shown_note = (
                f"; first {self.max_tokens} of {len(self.trace)} shown"
                if len(self.trace) > self.max_tokens
                else ""
            )
            heat.layout.xaxis.title = f"token (in generation order{shown_note})"
        curve = self.figures["curve"]
        with curve.batch_update():
            curve.data[-1].update(x=[size], y=[self.hit_rate])
        loads = self.figures["loads"]
        with loads.batch_update():
            loads.data[-1].update(x=[size], y=[self.loads / n if n else 0.0])
        misses = n - int(hits.sum())
        prefetched = self.loads - misses
        self.mb_moved = self.loads * self.expert_mb
        moved = f", <b>{self.mb_moved:,.1f} MB</b> moved" if self.expert_mb else ""
        split = f" ({misses} on a miss, {prefetched} prefetched)" if prefetched else ""
        self.summary.value = (
            "<div style='line-height:1.6;margin-top:6px'>"
            f"hit rate <b class='minimoe-hit-rate'>{self.hit_rate:.1%}</b><br>"
            f"{n - misses} hits, {misses} misses of {n} requests<br>"
            f"experts loaded <b class='minimoe-loads'>{self.loads}</b>{split}{moved}</div>"
        )


def cache_explorer(
    trace: RoutingTrace,
    policy: str = "lru",
    cache_size: int | None = None,
    *,
    expert_mb: float = 0.0,
    max_tokens: int = 120,
) -> CacheExplorer:
    """An interactive expert cache replaying a routing trace.

    Args:
        trace: a `minimoe.serving.RoutingTrace` (recorded while generating).
        policy: "lru", "lfu", "prefetch" or "belady".
        cache_size: experts cached at first (default: half of L·E).
        expert_mb: megabytes per expert, to show the bytes the loads move (0: not shown).
        max_tokens: tokens drawn in the hit/miss picture (the hit rate counts them all).
    """
    if not isinstance(trace, RoutingTrace):
        raise TypeError(f"trace must be a RoutingTrace, got {type(trace).__name__}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    total = trace.n_layers * trace.n_experts
    cache_size = total // 2 if cache_size is None else cache_size
    if (
        isinstance(cache_size, bool)
        or not isinstance(cache_size, int)
        or not 0 <= cache_size <= total
    ):
        raise ValueError(f"cache_size must be an int in [0, L*E = {total}], got {cache_size!r}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return CacheExplorer(trace, policy, cache_size, float(expert_mb), max_tokens)
