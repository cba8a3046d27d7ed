"""The benchmark's report: a markdown table per shape and routing, the targets, and a plot.

Ratios (computed per row of a table, from the medians of one run):
- "best minimoe" is the fastest minimoe implementation of the point, the loop over experts
  included (on one CPU core it often wins at large T: each expert's rows stay in cache);
- "vs HF" = time of HF's fastest backend / time of the best minimoe (> 1: minimoe is faster);
- "/ dense" = time of the best minimoe / time of the dense FFN with hidden K*F (the ceiling;
  1.3 means 30 % slower than dense);
- "vs loop" = time of the loop / time of the fastest *vectorised* implementation (einsum,
  padded_bmm, grouped_mm, triton): the speed-up that vectorising buys.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from minimoe.bench.impls import HF_IMPLS, MINIMOE_VECTORISED

ORDER = ("loop", *MINIMOE_VECTORISED, *HF_IMPLS, "dense", "router")


def _points(result: dict) -> dict:
    """{(shape, routing): {T: {impl: ms}}}"""
    pts: dict = defaultdict(lambda: defaultdict(dict))
    for r in result["rows"]:
        pts[(r["shape"], r["routing"])][r["T"]][r["impl"]] = r["ms_median"]
    return pts


def ratios(ms: dict[str, float]) -> dict:
    """The best minimoe implementation of one point and its three ratios (None where missing)."""
    ours = {n: ms[n] for n in ("loop", *MINIMOE_VECTORISED) if n in ms}
    vectorised = [ms[n] for n in MINIMOE_VECTORISED if n in ms]
    hf = [ms[n] for n in HF_IMPLS if n in ms]
    if not ours:
        return dict(best=None, vs_hf=None, over_dense=None, vs_loop=None)
    best = min(ours, key=ours.get)
    t = ours[best]
    return dict(
        best=best,
        vs_hf=min(hf) / t if hf else None,
        over_dense=t / ms["dense"] if "dense" in ms else None,
        vs_loop=ms["loop"] / min(vectorised) if "loop" in ms and vectorised else None,
    )


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    return f"{v:.3g}{unit}"


def targets(result: dict) -> list[str]:
    """The issue's three targets, as measured in this run."""
    pts, lines = _points(result), []
    worst = None
    for (shape, routing), by_T in pts.items():
        for T, ms in by_T.items():
            r = ratios(ms)
            if T >= 256 and r["vs_hf"] is not None and (worst is None or r["vs_hf"] < worst[0]):
                worst = (r["vs_hf"], shape, routing, T, r["best"])
    if worst:
        ok = "met" if worst[0] >= 1.0 else "missed"
        lines.append(
            f"- best minimoe vs HF's best backend, every shape, T >= 256 (target >= 1, stretch 1.3): "
            f"worst {worst[0]:.2f}x at {worst[1]}/{worst[2]} T={worst[3]} ({worst[4]}) — {ok}"
        )
    for shape, key, label, target, better in [
        ("mixtral-cpu", "over_dense", "time / dense FFN at T=4096 (target <= 1.3)", 1.3, "le"),
        ("fine-grained", "vs_loop", "speed-up over the loop at T=4096 (target >= 5)", 5.0, "ge"),
    ]:
        for (s, routing), by_T in pts.items():
            if s == shape and 4096 in by_T:
                v = ratios(by_T[4096])[key]
                if v is None:
                    continue
                ok = (v <= target) if better == "le" else (v >= target)
                lines.append(f"- {shape}/{routing}: {label}: {v:.2f} — {'met' if ok else 'missed'}")
    return lines


def markdown(result: dict) -> str:
    """The whole report as markdown."""
    m, st = result["machine"], result["settings"]
    out = [
        "# minimoe benchmark: the experts step, forward, no_grad, routing fixed",
        "",
        f"Device: {m['device']} — {m['device_name']}; {m['cpu_count']} logical CPUs; "
        f"torch {m['torch']} with {m['torch_threads']} threads; transformers {m['transformers']}; "
        f"dtype {st['dtype']}; {st['repeats']} repeats (median); run took "
        f"{result['elapsed_s']:.0f} s.",
        "",
        "Times in ms (median). Ratios: see `minimoe/bench/report.py` — vs HF and vs loop are "
        "speed-ups of the best minimoe implementation, the loop included (> 1 is faster); vs loop is the best vectorised one's; "
        "/ dense is its time over the dense FFN's (hidden K*F).",
        "",
        "## Targets",
        "",
        *(targets(result) or ["- (no point measured both sides of a target)"]),
    ]
    for (shape, routing), by_T in _points(result).items():
        D, F, E, K = st["shapes"][shape]
        present = [n for n in ORDER if any(n in ms for ms in by_T.values())]
        cols = [*present, "best minimoe", "vs HF", "/ dense", "vs loop"]
        out += ["", f"## {shape} (D={D}, F={F}, E={E}, K={K}), {routing} routing", ""]
        out += ["| T | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for T in sorted(by_T):
            ms, r = by_T[T], ratios(by_T[T])
            cells = [_fmt(ms.get(n)) for n in present]
            cells += [r["best"] or "—", _fmt(r["vs_hf"], "x"), _fmt(r["over_dense"]), _fmt(r["vs_loop"], "x")]  # fmt: skip
            out.append(f"| {T} | " + " | ".join(cells) + " |")
    if result["skipped"]:
        out += ["", "## Not measured", ""]
        for s in result["skipped"]:
            where = f"{s['shape']}" + (f"/{s['routing']} T={s['T']}" if "T" in s else "")
            out.append(f"- {s['impl']} at {where}: {s['reason']}")
    if "ceilings" in result:  # a GPU run: the roofline columns and the GPU targets
        from minimoe.bench.gpu import gpu_markdown

        out += gpu_markdown(result)
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    """ms vs T per implementation, one panel per (shape, routing), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _points(result)
    n = max(len(pts), 1)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for ax, ((shape, routing), by_T) in zip(axes.flat, pts.items()):
        for name in ORDER:
            xs = sorted(T for T in by_T if name in by_T[T])
            if xs:
                style = "--" if name in HF_IMPLS else (":" if name in ("dense", "router") else "-")
                ax.plot(xs, [by_T[T][name] for T in xs], style, marker="o", ms=3, label=name)
        ax.set(xscale="log", yscale="log", xlabel="tokens T", ylabel="ms (median)")
        ax.set_title(f"{shape}, {routing} routing")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(pts) :]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(f"{m['device_name']}, {m['torch_threads']} threads, torch {m['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
