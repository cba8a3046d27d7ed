"""The GPU side of the benchmark: the two ceilings, the roofline columns and the speed targets.

On a CUDA device the sweep (`cli.py`) also measures, once per run and on the same GPU:

- the **matmul ceiling**: TFLOP/s of a large bf16 matmul (8192^3 by default), the most this GPU
  does in practice on the kind of work the experts step is at large T;
- the **copy ceiling**: TB/s of a large device-to-device copy (1 GiB by default), counting the
  bytes read and the bytes written, the most it streams at small T, where the experts step
  only has to read the weights of the experts that received a token.

and for every point: FLOP/s with FLOPs = 2 * T * K * n_mats * D * F (n_mats = 3 for SwiGLU, the
useful work, `minimoe.moe_cost`), TB/s over the weights of the *touched* experts (those with at
least one slot: the bytes any implementation must read), each as a percent of its ceiling; and
for the Triton rows and the grouped-matmul path, forward + backward time (gradients of x, the
gates and every weight; 3x the forward FLOPs).

Targets of the Triton kernels: at T >= 4096, at least as fast as the torch grouped-matmul path
and at least 50% of the matmul ceiling; at T <= 16, at least 75% of the copy ceiling over the
touched weights; forward + backward at least as fast as the grouped-matmul path.

Left out: power and clock control (figures are as the GPU boosts), L2 flushing between calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.bench.timing import median, time_interleaved

TRITON_IMPLS = ("triton", "triton-tuned")
FWD_BWD_IMPLS = ("triton", "triton-tuned", "grouped_mm")
GROUPED = "grouped_mm"


def n_mats(activation: str = "swiglu") -> int:
    """Matmuls per expert FFN: 3 for SwiGLU (gate, up, down), 2 for GELU."""
    if activation not in ("swiglu", "gelu"):
        raise ValueError(f"activation={activation!r} is not 'swiglu' or 'gelu'")
    return 3 if activation == "swiglu" else 2


def moe_flops(T: int, D: int, F: int, K: int, activation: str = "swiglu") -> int:
    """Useful forward FLOPs of the experts step: 2 * T * K * n_mats * D * F."""
    return 2 * T * K * n_mats(activation) * D * F


def touched_experts(expert_TK: torch.Tensor, n_experts: int) -> int:
    """How many experts receive at least one slot."""
    if expert_TK.numel() == 0:
        return 0
    return int((torch.bincount(expert_TK.reshape(-1), minlength=n_experts) > 0).sum())


def touched_weight_bytes(
    n_touched: int, D: int, F: int, dtype_bytes: int, activation: str = "swiglu"
) -> int:
    """Bytes of the expert weights that must be read at least once: n_touched * n_mats * D * F."""
    return n_touched * n_mats(activation) * D * F * dtype_bytes


def point_metrics(
    ms: float, T: int, D: int, F: int, K: int, touched_bytes: int, ceilings: dict
) -> dict:
    """The roofline columns of one row: TFLOP/s, TB/s over touched weights, % of each ceiling."""
    s = ms * 1e-3
    tflops = moe_flops(T, D, F, K) / s / 1e12 if s > 0 else 0.0
    tbps = touched_bytes / s / 1e12 if s > 0 else 0.0
    return dict(
        touched_weight_bytes=touched_bytes,
        tbps_touched=tbps,
        pct_matmul=100 * tflops / ceilings["matmul_tflops"],
        pct_copy=100 * tbps / ceilings["copy_tbps"],
    )


def measure_ceilings(
    device: torch.device, n: int = 8192, copy_bytes: int = 2**30, repeats: int = 10
) -> dict:
    """The two ceilings of this GPU: a bf16 n x n x n matmul's TFLOP/s, a copy's TB/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    samples = time_interleaved(
        {"matmul": lambda: a @ b, "copy": lambda: dst.copy_(src)}, device, repeats, warmup=3
    )
    mm, cp = median(samples["matmul"]), median(samples["copy"])
    return dict(
        matmul_tflops=2 * n**3 / (mm * 1e-3) / 1e12,
        copy_tbps=2 * copy_bytes / (cp * 1e-3) / 1e12,  # read + write
        matmul_shape=[n, n, n],
        copy_bytes=copy_bytes,
    )


def forward_backward_fns(
    fns: dict[str, Callable], x_TD: torch.Tensor, expert_TK, gate_TK, params
) -> dict[str, Callable[[], object]]:
    """Closures running forward + backward (grads of x, gate, w1, w2, w3) for each experts fn.

    fns: name -> experts function with the shared signature (x, expert, gate, params).
    """
    leaves = [x_TD, gate_TK, params.w1_EFD, params.w2_EDF, params.w3_EFD]
    leaves = [t.detach().requires_grad_(True) for t in leaves]  # shares storage: no copies
    p = params._replace(w1_EFD=leaves[2], w2_EDF=leaves[3], w3_EFD=leaves[4])
    dy = torch.randn_like(x_TD)

    def make(fn: Callable) -> Callable[[], object]:
        def step() -> object:
            y = fn(leaves[0], expert_TK, leaves[1], p)
            return torch.autograd.grad(y, leaves, dy)

        return step

    return {name: make(fn) for name, fn in fns.items()}


def experts_fns(names: list[str], shape: tuple[int, int, int, int], device) -> dict[str, Callable]:
    """The experts functions (shared signature) behind the benchmark names that train."""
    import minimoe

    fns: dict[str, Callable] = {}
    if GROUPED in names:
        fns[GROUPED] = minimoe.grouped_mm_moe
    if any(n in names for n in TRITON_IMPLS):
        from minimoe.triton import triton_moe, tuned_config

        D, F, E, K = shape
        if "triton" in names:
            fns["triton"] = triton_moe
        if "triton-tuned" in names:

            def tuned(x, e, g, p):
                return triton_moe(x, e, g, p, config=tuned_config(x.shape[0], D, F, E, K, device))

            fns["triton-tuned"] = tuned
    return fns


def forward_backward_samples(
    names: list[str], shape, x_TD, expert_TK, gate_TK, params, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Forward + backward times (ms samples) of the named implementations at one point."""
    fns = experts_fns(names, shape, x_TD.device)
    if not fns:
        return {}
    steps = forward_backward_fns(fns, x_TD, expert_TK, gate_TK, params)
    return time_interleaved(steps, x_TD.device, repeats, warmup)


def _fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}%"


def target_report(rows: list[dict], ceilings: dict) -> list[str]:
    """The GPU speed targets, as measured: one markdown line per target, 'met' or 'missed'.

    rows: sweep rows (forward ms in "ms_median", optional "ms_fwd_bwd" and "pct_*" columns).
    """
    by_point: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_point.setdefault((r["shape"], r["routing"], r["T"]), {})[r["impl"]] = r
    lines = [
        f"- ceilings on this GPU: bf16 matmul {ceilings['matmul_tflops']:.3g} TFLOP/s, "
        f"device-to-device copy {ceilings['copy_tbps']:.3g} TB/s (read + write)"
    ]
    checks = {"large": [], "small": [], "fwd_bwd": []}
    for (shape, routing, T), impls in sorted(by_point.items()):
        ours = [impls[n] for n in TRITON_IMPLS if n in impls]
        if not ours:
            continue
        where = f"{shape}/{routing} T={T}"
        best = min(ours, key=lambda r: r["ms_median"])
        if T >= 4096:
            g = impls.get(GROUPED)
            speed = g["ms_median"] / best["ms_median"] if g else None
            ok = (speed is None or speed >= 1.0) and best.get("pct_matmul", 0.0) >= 50.0
            checks["large"].append((ok, f"{where}: {best['impl']} {_fmt_pct(best.get('pct_matmul'))} "
                                        f"of matmul, {speed or float('nan'):.2f}x grouped_mm"))  # fmt: skip
        if T <= 16:
            ok = best.get("pct_copy", 0.0) >= 75.0
            checks["small"].append((ok, f"{where}: {best['impl']} {_fmt_pct(best.get('pct_copy'))} of copy"))  # fmt: skip
        timed = [r for r in ours if r.get("ms_fwd_bwd")]
        g = impls.get(GROUPED)
        if timed and g and g.get("ms_fwd_bwd"):
            fb = min(timed, key=lambda r: r["ms_fwd_bwd"])
            speed = g["ms_fwd_bwd"] / fb["ms_fwd_bwd"]
            checks["fwd_bwd"].append((speed >= 1.0, f"{where}: {fb['impl']} {speed:.2f}x grouped_mm"))  # fmt: skip
    labels = {
        "large": "T >= 4096: >= grouped_mm speed and >= 50% of the matmul ceiling",
        "small": "T <= 16: >= 75% of the copy ceiling over the touched expert weights",
        "fwd_bwd": "forward + backward: at least as fast as grouped_mm",
    }
    for key, label in labels.items():
        found = checks[key]
        if not found:
            lines.append(f"- {label}: not measured")
            continue
        missed = [text for ok, text in found if not ok]
        verdict = "met" if not missed else f"missed at {len(missed)} of {len(found)} points"
        worst = "; ".join(missed[:3]) if missed else found[0][1]
        lines.append(f"- {label}: {verdict} ({worst})")
    return lines


def gpu_markdown(result: dict) -> list[str]:
    """The GPU section of the report: targets, then the roofline columns of the Triton rows."""
    ceilings = result["ceilings"]
    out = ["", "## GPU targets", "", *target_report(result["rows"], ceilings), ""]
    out += ["## Roofline (forward; fwd+bwd in ms)", ""]
    out += ["| shape | routing | T | impl | ms | TFLOP/s | % matmul | TB/s touched | % copy | fwd+bwd ms |"]  # fmt: skip
    out += ["|---" * 10 + "|"]
    for r in result["rows"]:
        if r["impl"] in (*TRITON_IMPLS, GROUPED, "hf-grouped_mm", "dense") and "pct_copy" in r:
            fb = r.get("ms_fwd_bwd")
            out.append(
                f"| {r['shape']} | {r['routing']} | {r['T']} | {r['impl']} | {r['ms_median']:.3g} "
                f"| {r['tflops']:.3g} | {r['pct_matmul']:.0f}% | {r['tbps_touched']:.3g} "
                f"| {r['pct_copy']:.0f}% | {'—' if fb is None else f'{fb:.3g}'} |"
            )
    return out
