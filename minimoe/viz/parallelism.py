"""Figures of chapter 09 (expert parallelism): where experts and tokens live, the traffic of one
all-to-all, and what it costs at real scales.

- `plot_parallelism_layouts`: data, expert, expert-data and tensor parallelism side by side; each
  rank a box holding its experts (squares in the experts' colours, halves for tensor parallelism)
  and its tokens, with the collective each one needs written under it.
- `plot_traffic_matrix`: the rank-to-rank slot counts of one dispatch (`count_WW`, source rank
  by destination rank); the diagonal stays on its rank, everything else crosses the network.
- `traffic_explorer()`: the same heatmap, interactive over the number of ranks W, the router's
  skew, the tokens per rank and the placement (contiguous or the library's greedy one).
- `a2a_cost` and `plot_a2a_cost`: one MoE layer's expert compute against its all-to-all for
  Mixtral 8x7B and DeepSeek-V3, over NVLink and over InfiniBand, as the expert-parallel size grows.

Letters: W ranks (world size), EP the expert-parallel size, as in `minimoe.distributed`. Every
count is computed by the library (`minimoe.route`, `minimoe.distributed.traffic_matrix`,
`expert_ranks`, `greedy_placement`, `a2a_bytes_model`); this module only draws, with the
hardware constants below (each with its source).
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch, Rectangle

from minimoe.distributed import (
    a2a_bytes_model,
    expert_load_by_rank,
    expert_ranks,
    greedy_placement,
    traffic_matrix,
)
from minimoe.routing import route
from minimoe.viz._widgets import (
    Explorer,
    LiveFigure,
    column_layout,
    control_layout,
    expert_colour,
    note,
    text_colour,
)
from minimoe.viz.vectorised import skewed_logits

# --- hardware constants (per GPU, one direction), each from its vendor's page ---------------------
# NVLink 4 on an H100 SXM: 900 GB/s total bidirectional per GPU, so 450 GB/s each way
# (nvidia.com/en-us/data-center/h100, "NVIDIA NVLink: 900GB/s").
NVLINK4_BYTES_S = 450e9
# InfiniBand NDR: 400 Gb/s per port = 50 GB/s each way; a DGX H100 has one ConnectX-7 port per GPU
# (nvidia.com/en-us/data-center/dgx-h100, "8x NVIDIA ConnectX-7 ... up to 400Gb/s").
IB_NDR_BYTES_S = 400e9 / 8
# H100 SXM dense BF16 tensor-core peak: 989 TFLOP/s (the 1,979 on the data sheet is with 2:4
# sparsity). Real kernels reach a fraction of it, so compute time below is a lower bound.
H100_BF16_FLOPS = 989e12
GPUS_PER_NODE = 8  # one NVLink domain in a DGX H100 (the same page)
LINKS = {"NVLink 4 (450 GB/s)": NVLINK4_BYTES_S, "InfiniBand NDR (50 GB/s)": IB_NDR_BYTES_S}

# The MoE layers of two published models (config.json on the Hugging Face Hub):
# mistralai/Mixtral-8x7B-v0.1 (arXiv 2401.04088); deepseek-ai/DeepSeek-V3 (arXiv 2412.19437):
# hidden_size 7168, moe_intermediate_size 2048, n_routed_experts 256, num_experts_per_tok 8.
MOE_LAYERS = {
    "Mixtral 8x7B": dict(d_model=4096, d_ff=14336, n_experts=8, top_k=2),
    "DeepSeek-V3": dict(d_model=7168, d_ff=2048, n_experts=256, top_k=8),
}

RANK_COLOURS = ("#4D4D4D", "#7F7F7F", "#A6A6A6", "#CCCCCC")  # tokens: whose batch (greys)
LAYOUTS = ("data", "expert", "expert-data", "tensor")


# --- where experts and tokens live ---------------------------------------------------------------


def _layout(kind: str, n_experts: int, world_size: int, ep_size: int) -> list[dict]:
    """Per rank: the experts it holds (with the fraction of each), whose tokens it starts with."""
    if kind == "data":
        return [{"experts": list(range(n_experts)), "part": 1.0, "tokens": w}
                for w in range(world_size)]  # fmt: skip
    if kind == "expert":
        rank_E = expert_ranks(n_experts, world_size).tolist()
        return [{"experts": [e for e in range(n_experts) if rank_E[e] == w], "part": 1.0,
                 "tokens": w} for w in range(world_size)]  # fmt: skip
    if kind == "expert-data":
        rank_E = expert_ranks(n_experts, ep_size).tolist()
        return [{"experts": [e for e in range(n_experts) if rank_E[e] == w % ep_size],
                 "part": 1.0, "tokens": w} for w in range(world_size)]  # fmt: skip
    if kind == "tensor":
        return [{"experts": list(range(n_experts)), "part": 1.0 / world_size, "tokens": None}
                for _ in range(world_size)]  # fmt: skip
    raise ValueError(f"kind must be one of {LAYOUTS}, got {kind!r}")


_CAPTIONS = {
    "data": ("data parallel: every rank holds all E experts",
             "memory E per rank; all-reduce of every gradient"),
    "expert": ("expert parallel (EP = W): E/W experts per rank",
               "memory E/W; all-to-all of tokens, out and back"),
    "expert-data": ("expert-data parallel (EP < W): each expert on W/EP ranks",
                    "memory E/EP; all-to-all in an EP group + all-reduce of experts"),
    "tensor": ("tensor parallel: every expert split over all ranks",
               "memory E/W; every rank sees every token; all-reduce of outputs"),
}  # fmt: skip


def plot_parallelism_layouts(
    n_experts: int = 8, world_size: int = 4, ep_size: int = 2, axes=None
) -> np.ndarray:
    """Four panels (data, expert, expert-data, tensor parallelism): each rank's experts and tokens.

    A rank is a rounded box; an expert is a square in its colour with its number (a sliver of a
    square under tensor parallelism, where each rank holds 1/W of every expert's columns); the
    tokens a rank starts with are circles in its grey (under tensor parallelism every rank sees
    every token, drawn as all the greys).

    Args:
        n_experts: E, a multiple of world_size and of ep_size.
        world_size: W ranks (2 to 4, so the panels stay legible).
        ep_size: EP for the expert-data panel, a divisor of W smaller than W.
        axes: four Axes (default: a new 4 x 1 figure).

    Returns:
        The four Axes.
    """
    if not 2 <= world_size <= 4:
        raise ValueError(f"world_size must be 2, 3 or 4 for a legible picture, got {world_size}")
    if not (1 <= ep_size < world_size and world_size % ep_size == 0):
        raise ValueError(
            f"ep_size must divide world_size={world_size} and be smaller, got {ep_size}"
        )
    if n_experts < 1 or n_experts % world_size or n_experts > 16:
        raise ValueError(
            f"n_experts must be a multiple of world_size={world_size}, at most 16, got {n_experts}"
        )
    if axes is None:
        _, axes = plt.subplots(4, 1, figsize=(11, 7.4), layout="constrained")
    tokens_per_rank = 4
    box_w = max(n_experts, 2 * tokens_per_rank) * 0.55 + 0.4
    for ax, kind in zip(axes, LAYOUTS, strict=True):
        ranks = _layout(kind, n_experts, world_size, ep_size)
        for w, rank in enumerate(ranks):
            x0 = w * (box_w + 0.5)
            ax.add_patch(FancyBboxPatch((x0, 0), box_w, 2.2, boxstyle="round,pad=0.05",
                                        facecolor="#F7F7F7", edgecolor="#444444", lw=1))  # fmt: skip
            ax.text(x0 + 0.1, 2.05, f"rank {w}", va="top", fontsize=9, fontweight="bold")
            for i, e in enumerate(rank["experts"]):
                colour = expert_colour(e)
                width = 0.5 * rank["part"] if rank["part"] < 1 else 0.5
                x = x0 + 0.2 + i * 0.55
                ax.add_patch(Rectangle((x, 0.95), width, 0.5, facecolor=colour,
                                       edgecolor="black", lw=0.6))  # fmt: skip
                if rank["part"] < 1:  # the missing part of the expert, outlined
                    ax.add_patch(Rectangle((x + width, 0.95), 0.5 - width, 0.5, fill=False,
                                           edgecolor="#999999", lw=0.6, ls=":"))  # fmt: skip
                    ax.text(x + 0.25, 0.84, f"{e}", ha="center", va="top", fontsize=7)
                else:
                    ax.text(x + 0.25, 1.2, f"{e}", ha="center", va="center", fontsize=8,
                            color=text_colour(colour))  # fmt: skip
            sources = range(world_size) if rank["tokens"] is None else [rank["tokens"]]
            for i in range(tokens_per_rank * (2 if rank["tokens"] is None else 1)):
                src = list(sources)[i % len(sources)]
                ax.add_patch(plt.Circle((x0 + 0.3 + i * 0.45, 0.35), 0.16,
                                        facecolor=RANK_COLOURS[src % len(RANK_COLOURS)],
                                        edgecolor="black", lw=0.5))  # fmt: skip
            if kind == "expert-data":
                ax.text(x0 + box_w - 0.1, 2.05, f"EP group {w // ep_size}", ha="right", va="top",
                        fontsize=8, color="#555555")  # fmt: skip
        title, cost = _CAPTIONS[kind]
        ax.set_title(f"{title}  ·  {cost}", loc="left", fontsize=10)
        ax.set_xlim(-0.3, world_size * (box_w + 0.5))
        ax.set_ylim(-0.15, 2.35)
        ax.set_aspect("equal")
        ax.axis("off")
    axes[-1].text(0, -0.45, "squares: experts (number = expert id, colour = expert);  circles: "
                  "tokens, grey = the rank whose batch they come from", fontsize=8,
                  color="#555555", va="top")  # fmt: skip
    return axes


# --- the traffic of one all-to-all ---------------------------------------------------------------


def plot_traffic_matrix(count_WW: torch.Tensor, ax: Axes | None = None, title: str | None = None):
    """Slots sent from each source rank (rows) to each destination rank (columns), as a heatmap.

    The diagonal (slots whose expert lives on their own rank) is outlined: it never leaves the
    rank. Each cell shows its count; the title gives the fraction that crosses ranks.

    Args:
        count_WW: (W, W) counts, e.g. `minimoe.distributed.traffic_matrix(...)`.
        ax: where to draw (default: a new figure).
        title: the Axes title (default: the cross-rank fraction).

    Returns:
        The Axes.
    """
    if not isinstance(count_WW, torch.Tensor) or count_WW.dim() != 2:
        raise ValueError("count_WW must be a 2-D tensor (source rank, destination rank)")
    W = count_WW.shape[0]
    if count_WW.shape[1] != W:
        raise ValueError(f"count_WW must be square, got {tuple(count_WW.shape)}")
    counts = count_WW.detach().cpu().double().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.4, 1.6 + 0.75 * W), max(3.4, 1.2 + 0.7 * W)),
                             layout="constrained")  # fmt: skip
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(float(counts.max()), 1.0))
    for i in range(W):
        for j in range(W):
            shade = plt.get_cmap("Blues")(counts[i, j] / max(float(counts.max()), 1.0))
            hex_colour = "#{:02X}{:02X}{:02X}".format(*(round(255 * c) for c in shade[:3]))
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=9,
                    color=text_colour(hex_colour))  # fmt: skip
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#D55E00", lw=2))
    ax.set_xticks(range(W))
    ax.set_yticks(range(W))
    ax.set_xlabel("destination rank (holds the expert)")
    ax.set_ylabel("source rank (holds the token)")
    total = counts.sum()
    crossing = total - np.trace(counts)
    share = crossing / total if total else 0.0
    ax.set_title(title or f"slots per rank pair: {share:.0%} cross ranks", fontsize=10)
    ax.figure.colorbar(image, ax=ax, label="slots", fraction=0.046, pad=0.04)
    return ax


def rank_routing(
    n_ranks: int, tokens_per_rank: int, n_experts: int, top_k: int, skew: float, seed: int = 0
) -> list[torch.Tensor]:
    """Each rank's routed experts (expert_N, slot order t*K + k) for one step.

    Each rank routes its own tokens with `minimoe.route` ("mixtral" gating) on random logits plus
    the same Zipf prior of strength `skew` (`skewed_logits`): skew 0 is a router without
    favourites, a large skew sends most slots to the first experts whichever rank they are on.
    """
    out = []
    for w in range(n_ranks):
        logits_TE = skewed_logits(tokens_per_rank, n_experts, skew, seed=seed + 1000 * w)
        out.append(route(logits_TE, top_k, "mixtral").expert_TK.reshape(-1))
    return out


class TrafficExplorer(Explorer):
    """The widget `traffic_explorer` returns (see the module docstring).

    Attributes beyond `Explorer`'s: `count_WW` (the last traffic matrix), `rank_E` (the placement
    drawn), `cross_fraction` (slots that left their rank, over all slots), `model_fraction`
    ((W - 1) / W, the uniform-routing prediction), `max_over_mean` (the busiest destination's
    slots over the mean: the straggler).
    """

    def __init__(self, *, n_ranks: int, n_experts: int, top_k: int, seed: int) -> None:
        self.seed = seed
        self.n_experts, self.top_k = n_experts, top_k
        layout = control_layout("11em")
        c = {
            "n_ranks": widgets.SelectionSlider(options=[1, 2, 4, 8], value=n_ranks,
                                               description="ranks W", **layout),
            "skew": widgets.FloatSlider(0.0, min=0.0, max=3.0, step=0.1,
                                        description="router skew s", **layout),
            "tokens": widgets.SelectionSlider(options=[64, 256, 1024], value=256,
                                              description="tokens per rank", **layout),
            "placement": widgets.Dropdown(options=["contiguous", "greedy"], value="contiguous",
                                          description="placement", **layout),
        }  # fmt: skip
        heat = LiveFigure(go.Heatmap(z=[[0]], colorscale="Blues", texttemplate="%{z}",
                                     hovertemplate="rank %{y} → rank %{x}: %{z} slots"
                                     "<extra></extra>", colorbar=dict(title="slots")))  # fmt: skip
        heat.update_layout(template="plotly_white", height=420, width=480,
                           xaxis_title="destination rank (holds the expert)",
                           yaxis_title="source rank (holds the token)",
                           yaxis=dict(autorange="reversed", dtick=1), xaxis=dict(dtick=1),
                           margin=dict(l=70, r=20, t=50, b=60))  # fmt: skip
        recv = LiveFigure()
        recv.add_bar(x=[], y=[], name="slots received", marker_color="#0072B2",
                     hovertemplate="rank %{x}: %{y} slots<extra></extra>")  # fmt: skip
        recv.add_scatter(x=[], y=[], mode="lines", name="mean", line=dict(color="#555555",
                                                                            dash="dot"))  # fmt: skip
        recv.update_layout(template="plotly_white", height=240, width=480,
                           title="slots each rank's experts receive (the busiest one is the "
                           "straggler)", title_font_size=12, xaxis=dict(title="rank", dtick=1),
                           yaxis_title="slots", showlegend=False,
                           margin=dict(l=60, r=20, t=40, b=40))  # fmt: skip
        self.summary = widgets.HTML()
        header = note(
            f"<b>One all-to-all.</b> Each rank routes its own tokens over E = {n_experts} experts "
            f"(top-{top_k}); a slot goes to the rank that holds its expert. Off the diagonal it "
            "crosses the network. Raise the skew: one rank's experts get most of the slots."
        )
        left = widgets.VBox([header, *c.values(), self.summary], layout=column_layout())
        super().__init__([widgets.HBox([left, widgets.VBox([heat, recv])])], controls=c,
                         figures={"traffic": heat, "received": recv})  # fmt: skip
        self._watch(self._update)
        self._timed("init", self._update)

    def _update(self) -> None:
        W = self.controls["n_ranks"].value
        E, K = self.n_experts, self.top_k
        expert_WN = rank_routing(W, self.controls["tokens"].value, E, K,
                                 self.controls["skew"].value, self.seed)  # fmt: skip
        if self.controls["placement"].value == "greedy":
            count_WE = expert_load_by_rank(expert_WN, E)
            self.rank_E = greedy_placement(count_WE, E // W)
        else:
            self.rank_E = expert_ranks(E, W)
        self.count_WW = count = traffic_matrix(expert_WN, self.rank_E, W)
        total = int(count.sum())
        crossing = total - int(count.diagonal().sum())
        self.cross_fraction = crossing / total if total else 0.0
        self.model_fraction = (W - 1) / W
        recv_W = count.sum(0)
        self.max_over_mean = float(recv_W.max()) / (total / W) if total else 0.0
        heat, recv = self.figures["traffic"], self.figures["received"]
        with heat.batch_update():
            heat.data[0].z = count.tolist()
            heat.data[0].x = list(range(W))
            heat.data[0].y = list(range(W))
            heat.layout.title.text = f"slots from rank to rank: {self.cross_fraction:.0%} cross"
        with recv.batch_update():
            recv.data[0].update(x=list(range(W)), y=recv_W.tolist())
            recv.data[1].update(x=[-0.5, W - 0.5], y=[total / W] * 2)
        self.summary.value = (
            "<div style='line-height:1.6'>cross-rank slots: <b>"
            f"{self.cross_fraction:.1%}</b> of {total} (uniform routing predicts (W−1)/W = "
            f"{self.model_fraction:.1%}) · busiest rank receives <b>{self.max_over_mean:.2f}×</b>"
            " the mean: every other rank waits for it</div>"
        )


def traffic_explorer(
    n_ranks: int = 4, n_experts: int = 16, top_k: int = 2, seed: int = 0
) -> TrafficExplorer:
    """An interactive traffic matrix of one expert-parallel dispatch (see the module docstring).

    Args:
        n_ranks: the starting W (1, 2, 4 or 8).
        n_experts: E, a multiple of 8 (so every W divides it).
        top_k: K, 1 to E.
        seed: seeds the logits.
    """
    if n_ranks not in (1, 2, 4, 8):
        raise ValueError(f"n_ranks must be one of 1, 2, 4, 8, got {n_ranks}")
    if n_experts < 8 or n_experts % 8:
        raise ValueError(f"n_experts must be a multiple of 8, got {n_experts}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, {n_experts}], got {top_k}")
    return TrafficExplorer(n_ranks=n_ranks, n_experts=n_experts, top_k=top_k, seed=seed)


# --- the cost model at real scales ---------------------------------------------------------------


def a2a_cost(
    model: str, ep_size: int, tokens_per_rank: int = 4096, bytes_per_element: int = 2
) -> dict[str, float]:
    """Seconds of one MoE layer's forward on one rank: expert compute at peak, and its all-to-all
    (dispatch + combine, uniform routing) over each link of `LINKS`.

    compute = T·K·6·D·F / peak FLOP/s (a SwiGLU expert is three D×F matmuls, 2·D·F FLOPs each);
    all-to-all = `a2a_bytes_model(T, K, D, bytes, EP)` / the link's bandwidth one way.

    Returns:
        {"compute": s, "bytes": a2a bytes, <link name>: s, ...}
    """
    if model not in MOE_LAYERS:
        raise ValueError(f"model must be one of {list(MOE_LAYERS)}, got {model!r}")
    layer = MOE_LAYERS[model]
    if not 1 <= ep_size <= layer["n_experts"]:
        raise ValueError(f"ep_size must be in [1, {layer['n_experts']}] for {model}, got {ep_size}")
    T, K, D, F = tokens_per_rank, layer["top_k"], layer["d_model"], layer["d_ff"]
    nbytes = a2a_bytes_model(T, K, D, bytes_per_element, ep_size)
    out = {"compute": T * K * 6 * D * F / H100_BF16_FLOPS, "bytes": float(nbytes)}
    out.update({name: nbytes / bw for name, bw in LINKS.items()})
    return out


def plot_a2a_cost(tokens_per_rank: int = 4096, axes=None) -> np.ndarray:
    """Expert compute against the all-to-all per MoE layer, Mixtral 8x7B and DeepSeek-V3, as EP
    grows, over NVLink and over InfiniBand (log scale, milliseconds). Returns the two Axes."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    styles = {"compute": ("#009E73", "-", "o"), "NVLink 4 (450 GB/s)": ("#0072B2", "--", "s"),
              "InfiniBand NDR (50 GB/s)": ("#D55E00", "--", "^")}  # fmt: skip
    for ax, model in zip(axes, MOE_LAYERS, strict=True):
        eps = [ep for ep in (2, 4, 8, 16, 32, 64) if ep <= MOE_LAYERS[model]["n_experts"]]
        costs = [a2a_cost(model, ep, tokens_per_rank) for ep in eps]
        for key, (colour, ls, marker) in styles.items():
            label = "expert compute (H100 bf16 peak)" if key == "compute" else f"all-to-all, {key}"
            # NVLink joins the 8 GPUs of one node (DGX H100): beyond EP = 8 traffic leaves it
            n = sum(ep <= GPUS_PER_NODE for ep in eps) if key.startswith("NVLink") else len(eps)
            ax.plot(eps[:n], [c[key] * 1e3 for c in costs[:n]], ls=ls, marker=marker,
                    color=colour, label=label)  # fmt: skip
        if eps[-1] > GPUS_PER_NODE:
            ax.axvspan(GPUS_PER_NODE * 1.2, eps[-1] * 1.2, color="#EEEEEE", zorder=0)
            ax.text(GPUS_PER_NODE * 1.3, 0.15, "beyond one node:\nInfiniBand only", fontsize=8,
                    color="#555555")  # fmt: skip
        layer = MOE_LAYERS[model]
        ax.set_title(f"{model}: E={layer['n_experts']}, K={layer['top_k']}, D={layer['d_model']}, "
                     f"F={layer['d_ff']}", fontsize=10)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(eps, [str(e) for e in eps])
        ax.set_xlabel("expert-parallel size EP")
        ax.grid(alpha=0.3, which="both")
        ax.yaxis.set_major_formatter(lambda y, _: f"{y:g}")
    axes[0].set_ylim(0.1, 40)
    axes[0].set_ylabel(f"ms per MoE layer forward\n({tokens_per_rank} tokens per rank, bf16)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].figure.legend(handles, labels, fontsize=9, loc="outside lower center", ncol=3,
                          frameon=False)  # fmt: skip
    return axes


__all__ = [
    "H100_BF16_FLOPS",
    "IB_NDR_BYTES_S",
    "LINKS",
    "MOE_LAYERS",
    "NVLINK4_BYTES_S",
    "TrafficExplorer",
    "a2a_cost",
    "plot_a2a_cost",
    "plot_parallelism_layouts",
    "plot_traffic_matrix",
    "rank_routing",
    "traffic_explorer",
]
