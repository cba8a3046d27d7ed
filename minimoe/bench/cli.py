"""The sweep: shapes x routings x token counts x implementations, timed, written as JSON + md + PNG.

What is timed: the experts step alone, forward only, under `torch.no_grad()` (no autograd
graph), with the routing computed once before timing; the router is timed as its own row
(impl="router"). Each point is first validated: every implementation's output is compared with
`minimoe.grouped_mm_moe`'s before anything is timed. tflops counts *useful* FLOPs only (the
FFN matmuls on the T*K routed slots, `minimoe.moe_cost`; 2*T*D*E for the router), so padding and
one-hot matmuls lower it.

On a CUDA GPU (bfloat16 by default there) the run also measures the GPU's two ceilings and adds
the roofline columns, forward + backward times and the GPU targets of `minimoe.bench.gpu`.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

import minimoe
from minimoe.bench import gpu
from minimoe.bench import impls as bi
from minimoe.bench.timing import machine, median, time_interleaved

# name -> (D, F, E, K)
CPU_SHAPES = {"mixtral-cpu": (512, 1792, 8, 2), "fine-grained": (512, 256, 64, 8)}
GPU_SHAPES = {
    "mixtral": (4096, 14336, 8, 2),
    "olmoe": (2048, 1024, 64, 8),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
}
SMOKE_SHAPES = {"tiny": (32, 64, 4, 2)}
T_FULL = [1, 4, 16, 64, 256, 1024, 4096, 8192]
T_QUICK = [1, 64, 256, 1024, 4096]
VALIDATE_UP_TO_T = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m minimoe.bench` (and `python -m minimoe bench`)."""
    p.add_argument("--quick", action="store_true", help="T in 1,64,256,1024,4096; 3 repeats")
    p.add_argument("--smoke", action="store_true", help="a tiny shape, seconds (for tests)")
    p.add_argument("--json", type=Path, help="write rows here, and the .md table and .png plot")
    p.add_argument("--shapes", nargs="+", help=f"default: {list(CPU_SHAPES)} (+ real on GPU)")
    p.add_argument("--tokens", "-T", nargs="+", type=int, help="token counts to sweep")
    p.add_argument("--routing", nargs="+", default=["uniform", "skewed"])
    p.add_argument("--impls", nargs="+", help="only these implementations")
    p.add_argument("--repeats", type=int, help="timed samples per point (default 5, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: float32, bfloat16 on a GPU")
    p.add_argument("--max-ms", type=float, help="skip a larger T predicted slower than this")
    p.add_argument("--max-gb", type=float, default=2.0, help="skip what needs more memory")
    p.add_argument("--budget-s", type=float, help="stop sweeping T when the time is spent")
    p.add_argument("--seed", type=int, default=0)


def _settings(args: argparse.Namespace, device: torch.device) -> dict:
    shapes = dict(CPU_SHAPES, **(GPU_SHAPES if device.type == "cuda" else {}))
    if args.smoke:
        shapes, tokens, repeats, max_ms, budget = SMOKE_SHAPES, [1, 16], 1, 1e3, 120.0
    elif args.quick:
        tokens, repeats, max_ms, budget = T_QUICK, 3, 2500.0, 130.0
    else:
        tokens = T_FULL + ([16384] if device.type == "cuda" else [])
        repeats, max_ms, budget = 5, 10_000.0, 840.0
    known = dict(CPU_SHAPES, **GPU_SHAPES, **SMOKE_SHAPES)
    if args.shapes:
        unknown = [s for s in args.shapes if s not in known]
        if unknown:
            raise SystemExit(f"unknown shapes {unknown}; choose from {list(known)}")
        shapes = {s: known[s] for s in args.shapes}
    return dict(
        shapes=shapes,
        tokens=args.tokens or tokens,
        repeats=args.repeats or repeats,
        max_ms=args.max_ms or max_ms,
        budget_s=args.budget_s or budget,
    )


def _skip_reason(impl, name, T, shape, C, b, last, max_ms, max_gb) -> str | None:
    D, F, E, K = shape
    if bi.peak_bytes(name, T, D, F, E, K, C, b) > max_gb * 2**30:
        return f"needs more than {max_gb} GB"
    if impl.cost_model and name in last and last[name][0] >= 256:
        # predict from a point where compute, not per-call overhead, sets the time
        T0, ms0 = last[name]
        cost = functools.partial(minimoe.moe_cost, impl.cost_model, D=D, F=F, E=E, K=K)
        predicted = ms0 * max(1.0, cost(T=T).executed_flops / max(cost(T=T0).executed_flops, 1))
        if predicted > max_ms:
            return f"predicted {predicted:.0f} ms > {max_ms:.0f} ms from T={T0}"
    return None


def _validate(fns: dict, where: str) -> None:
    y_ref = fns["grouped_mm"]() if "grouped_mm" in fns else None
    if y_ref is None:
        return
    for name, fn in fns.items():
        if name in ("dense", "router"):
            continue
        y = fn()
        err = float((y.float() - y_ref.float()).abs().max()) if y.numel() else 0.0
        scale = float(y_ref.float().abs().max()) if y_ref.numel() else 0.0
        if err > 2e-2 * max(scale, 1e-3):
            raise RuntimeError(f"{name} disagrees with grouped_mm at {where}: max diff {err:.3g}")


def sweep(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns {"machine", "settings", "rows", "skipped", "elapsed_s"}."""
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = DTYPES[args.dtype]
    s = _settings(args, device)
    info = machine(device)
    ceilings = gpu.measure_ceilings(device) if device.type == "cuda" else None
    rows, skipped, t_start = [], [], time.perf_counter()
    groups_left = len(s["shapes"]) * len(args.routing)
    for shape_name, shape in s["shapes"].items():
        D, F, E, K = shape
        params = bi.make_params(D, F, E, device, dtype, args.seed)
        router = bi.make_router(D, E, device, args.seed)
        x_all = torch.randn(max(s["tokens"]), D, generator=torch.Generator().manual_seed(1))
        x_all = x_all.to(device, dtype)
        impls, left_out = bi.build_impls(params, K, router, args.impls)
        for name, why in left_out.items():
            skipped.append(dict(impl=name, shape=shape_name, reason=why))
        gmm_path = minimoe.grouped_mm_path(x_all[:1], params)
        for routing in args.routing:
            last: dict[str, tuple[int, float]] = {}  # impl -> (T, fastest sample in ms)
            t_group = time.perf_counter()  # the time left is shared by the groups left
            share = (s["budget_s"] - (t_group - t_start)) / groups_left
            groups_left -= 1
            for T in s["tokens"]:
                if time.perf_counter() - t_group > share:
                    why = f"the time budget ({s['budget_s']:.0f} s over all shapes) was spent"
                    skipped.append(
                        dict(impl="*", shape=shape_name, routing=routing, T=T, reason=why)
                    )
                    continue
                x = x_all[:T]
                expert, gate = bi.make_routing(router, x, K, routing)
                C = bi.max_load(expert, E)
                fns = {}
                for name, impl in impls.items():
                    why = _skip_reason(
                        impl, name, T, shape, C, x.element_size(), last, s["max_ms"], args.max_gb
                    )
                    if why:
                        skipped.append(
                            dict(impl=name, shape=shape_name, routing=routing, T=T, reason=why)
                        )
                        continue
                    fns[name] = functools.partial(impl.fn, x, expert, gate)
                with torch.no_grad():
                    if T <= VALIDATE_UP_TO_T:
                        _validate(fns, f"{shape_name}/{routing}/T={T}")
                    samples = time_interleaved(fns, device, s["repeats"], args.warmup)
                gpu_cols = {}  # on a GPU: roofline columns, and forward + backward times
                if ceilings is not None:
                    fwd_bwd = gpu.forward_backward_samples(
                        [n for n in fns if n in gpu.FWD_BWD_IMPLS], shape, x, expert, gate,
                        params, s["repeats"], args.warmup,
                    )  # fmt: skip
                    touched = gpu.touched_weight_bytes(gpu.touched_experts(expert, E), D, F,
                                                       x.element_size())  # fmt: skip
                    for name, ms in samples.items():
                        if name != "router":
                            gpu_cols[name] = gpu.point_metrics(median(ms), T, D, F, K, touched, ceilings)  # fmt: skip
                            if name in fwd_bwd:
                                gpu_cols[name]["ms_fwd_bwd"] = median(fwd_bwd[name])
                useful = minimoe.moe_cost("grouped_mm", T, D, F, E, K).useful_flops
                for name, ms in samples.items():
                    ms_med = median(ms)
                    last[name] = (T, min(ms))
                    flops = 2 * T * D * E if name == "router" else useful
                    rows.append(
                        dict(
                            impl=name, shape=shape_name, routing=routing, T=T, D=D, F=F, E=E, K=K,
                            dtype=args.dtype, device=device.type, device_name=info["device_name"],
                            threads=torch.get_num_threads(), ms_median=ms_med, ms_min=min(ms),
                            repeats=len(ms), tflops=flops / (ms_med * 1e-3) / 1e12 if ms_med else 0.0,
                            max_load=C, balanced_load=bi.balanced_load(T, K, E),
                            path=gmm_path if name == "grouped_mm" else None,
                            **gpu_cols.get(name, {}),
                        )
                    )  # fmt: skip
                done = ", ".join(f"{n} {median(v):.2f}" for n, v in samples.items())
                print(f"[{time.perf_counter() - t_start:6.1f}s] {shape_name} {routing} T={T}: {done} ms", flush=True)  # fmt: skip
    info["torch_threads"] = torch.get_num_threads()
    settings = dict(s, shapes={k: list(v) for k, v in s["shapes"].items()}, dtype=args.dtype)
    settings.update(routing=args.routing, warmup=args.warmup, quick=args.quick, smoke=args.smoke)
    elapsed = time.perf_counter() - t_start
    result = dict(machine=info, settings=settings, rows=rows, skipped=skipped, elapsed_s=elapsed)
    return result if ceilings is None else dict(result, ceilings=ceilings)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the sweep, print the table, and write JSON + md + PNG when --json is given."""
    from minimoe.bench.report import markdown, plot

    result = sweep(args)
    table = markdown(result)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        args.json.with_suffix(".md").write_text(table)
        plot(result, args.json.with_suffix(".png"))
        print(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.json.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimoe.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)
