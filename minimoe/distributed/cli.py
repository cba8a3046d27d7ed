"""`python -m minimoe ep`: expert parallelism over W local processes, checked and timed.

    python -m minimoe ep --ranks 2 --json out.json

starts W processes (gloo on a CPU, `minimoe.distributed.launch`) and, in that one launch:

1. checks `ExpertParallelMoE` against one process (outputs and gradients; `verify.CASES`);
2. runs DeepSpeed's own MoE with ep_size=W on the same weights and compares (skipped, and said
   so, when deepspeed is not installed or with --no-deepspeed);
3. times a forward pass: the split into route / dispatch / experts / combine, the bytes each
   rank sent against `a2a_bytes_model`, the traffic matrix, the straggler wait, and the
   chunked all-to-all against the unchunked one;
4. with --lm-steps N, trains the tiny LM for N steps with expert parallelism and in one process
   (same seed) and reports both loss curves.

It prints a summary and writes everything to --json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minimoe.distributed.comm import time_rank
from minimoe.distributed.launch import launch
from minimoe.distributed.plan import (
    cross_rank_slots,
    expert_load_by_rank,
    expert_ranks,
    greedy_placement,
)
from minimoe.distributed.verify import CASES, check_cases


def _has_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def command_rank(rank: int, world_size: int, options: dict) -> dict:
    """Everything `minimoe ep` runs on one rank."""
    out: dict = {"checks": check_cases(rank, world_size, CASES)}
    if options["deepspeed"]:
        from minimoe.distributed.deepspeed_parity import deepspeed_rank

        out["deepspeed"] = deepspeed_rank(rank, world_size, top_k=2)
    out["timing"] = time_rank(rank, world_size, tokens=options["tokens"], steps=options["steps"])
    if options["lm_steps"]:
        from minimoe.distributed.train_lm import train_lm_rank

        out["lm"] = train_lm_rank(rank, world_size, steps=options["lm_steps"])
    return out


def summarise(results: list[dict], world_size: int) -> dict:
    """The report: the largest differences over ranks and cases, the traffic and the timing."""
    y = max(c["max_abs_diff"]["y"] for r in results for c in r["checks"].values())
    grad = max(
        v
        for r in results
        for c in r["checks"].values()
        for k, v in c["max_abs_diff"].items()
        if k.startswith("grad")
    )
    timing = [r["timing"] for r in results]
    phases = list(timing[0]["seconds"])
    report: dict = {
        "ranks": world_size,
        "max_abs_diff_vs_single": y,
        "max_abs_diff_grad_vs_single": grad,
        "checks": [name for name in results[0]["checks"]],
        "deepspeed_max_abs_diff": None,
        "a2a_bytes_measured": [t["a2a_bytes_measured"] for t in timing],
        "a2a_bytes_model": timing[0]["a2a_bytes_model"],
        "time_split_s": {p: max(t["seconds"][p] for t in timing) for p in phases},
        "time_split_s_by_rank": [t["seconds"] for t in timing],
        "traffic_matrix": timing[0]["traffic_matrix"],
        "rows_processed_by_rank": timing[0]["rows_processed_by_rank"],
        "straggler_wait_s_by_rank": [t["straggler_wait_s"] for t in timing],
        "overlap_by_rank": [t["overlap"] for t in timing],
        "timing_shape": {k: timing[0][k] for k in ("tokens", "d_model", "n_experts", "top_k")},
    }
    if "deepspeed" in results[0]:
        ds = [r["deepspeed"] for r in results]
        report["deepspeed_max_abs_diff"] = max(d["output"] for d in ds)
        report["deepspeed_l_aux_abs_diff"] = max(d["l_aux"] for d in ds)
        report["deepspeed_exp_counts_equal"] = all(d["exp_counts_equal"] for d in ds)
        report["deepspeed_grad_max_abs_diff"] = max(d["grad"] for d in ds)
        report["deepspeed_version"] = ds[0]["deepspeed_version"]
    return report


def placement_report(ids_by_rank: list[list[list[list[int]]]]) -> list[dict]:
    """Greedy placement against contiguous on the LM's real routing, per MoE layer.

    ids_by_rank[w][step][layer]: the expert ids of rank w's slots. The greedy placement is fitted
    on the first half of the steps and measured on the second half (held out), as a placement
    chosen from yesterday's traffic would be used on today's.
    """
    W, steps = len(ids_by_rank), len(ids_by_rank[0])
    n_layers = len(ids_by_rank[0][0])
    E = 1 + max(max(ids) for rank in ids_by_rank for step in rank for ids in step)
    E = -(-E // W) * W
    out = []
    for layer in range(n_layers):

        def load(lo: int, hi: int, layer: int = layer) -> torch.Tensor:
            per_rank = [
                torch.tensor([e for s in range(lo, hi) for e in ids_by_rank[w][s][layer]])
                for w in range(W)
            ]
            return expert_load_by_rank(per_rank, E)

        fit_WE, test_WE = load(0, steps // 2), load(steps // 2, steps)
        greedy_E = greedy_placement(fit_WE, E // W)
        total = int(test_WE.sum())
        out.append({
            "layer": layer,
            "slots_measured": total,
            "cross_rank_slots_contiguous": cross_rank_slots(test_WE, expert_ranks(E, W)),
            "cross_rank_slots_greedy": cross_rank_slots(test_WE, greedy_E),
            "greedy_rank_E": greedy_E.tolist(),
        })  # fmt: skip
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `minimoe ep`."""
    parser.add_argument("--ranks", type=int, default=2, help="processes W (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument(
        "--tokens", type=int, default=512, help="tokens per rank in the timing (default 512)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument(
        "--no-deepspeed", action="store_true", help="skip the comparison with DeepSpeed"
    )
    parser.add_argument(
        "--lm-steps",
        type=int,
        default=0,
        help="also train the tiny LM this many steps, expert-parallel and in one process",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="kill every rank after this many seconds"
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Launch the ranks, print the report; returns the exit code."""
    for name in ("ranks", "tokens", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lm_steps < 0:
        parser.error(f"--lm-steps must be >= 0, got {args.lm_steps}")
    deepspeed = not args.no_deepspeed and _has_deepspeed()
    if not args.no_deepspeed and not deepspeed:
        print("deepspeed is not installed: the DeepSpeed comparison is skipped")
    options = dict(deepspeed=deepspeed, tokens=args.tokens, steps=args.steps,
                   lm_steps=args.lm_steps)  # fmt: skip
    start = time.perf_counter()
    results = launch(command_rank, args.ranks, (options,), wall_timeout_s=args.timeout)
    report = summarise(results, args.ranks)
    if args.lm_steps:
        from minimoe.distributed.train_lm import train_lm_single

        torch.set_num_threads(1)
        single = train_lm_single(args.ranks, steps=args.lm_steps)
        ep_curve = results[0]["lm"]["lm_loss"]
        report["lm_loss_expert_parallel"] = ep_curve
        report["lm_loss_single_process"] = single
        report["lm_loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(ep_curve, single))
        report["placement_on_lm_routing"] = placement_report(
            [r["lm"]["expert_ids"] for r in results]
        )
    report["wall_s"] = time.perf_counter() - start
    report["threads_per_rank"] = 1
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _print(report: dict) -> None:
    W = report["ranks"]
    print(f"expert parallelism over {W} processes (gloo)")
    print(f"  vs one process: outputs {report['max_abs_diff_vs_single']:.2e}, "
          f"gradients {report['max_abs_diff_grad_vs_single']:.2e} (max abs diff, "
          f"{len(report['checks'])} cases)")  # fmt: skip
    if report["deepspeed_max_abs_diff"] is None:
        print("  DeepSpeed: not run")
    else:
        print(f"  DeepSpeed {report['deepspeed_version']} MoE(ep_size={W}): outputs "
              f"{report['deepspeed_max_abs_diff']:.2e}, l_aux "
              f"{report['deepspeed_l_aux_abs_diff']:.2e}, expert counts "
              f"{'equal' if report['deepspeed_exp_counts_equal'] else 'DIFFER'}")  # fmt: skip
    shape = report["timing_shape"]
    print(f"  one forward pass, T={shape['tokens']} tokens per rank, D={shape['d_model']}, "
          f"E={shape['n_experts']}, K={shape['top_k']}:")  # fmt: skip
    print(f"    all-to-all bytes sent per rank: {report['a2a_bytes_measured']} "
          f"(model, uniform routing: {report['a2a_bytes_model']:.0f})")  # fmt: skip
    print(f"    traffic matrix (rows, source -> destination): {report['traffic_matrix']}")
    split = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in report["time_split_s"].items())
    print(f"    time split (slowest rank per phase): {split}")
    waits = ", ".join(f"{1e3 * w:.1f}" for w in report["straggler_wait_s_by_rank"])
    print(f"    straggler wait per rank: {waits} ms")
    for rank, o in enumerate(report["overlap_by_rank"]):
        n = o["chunks"]
        print(f"    rank {rank}: unchunked {1e3 * o['seconds_1_chunk']:.1f} ms, {n} chunks "
              f"{1e3 * o[f'seconds_{n}_chunks']:.1f} ms")  # fmt: skip
    if "lm_loss_max_abs_diff" in report:
        steps = len(report["lm_loss_single_process"])
        print(f"  tiny LM, {steps} steps: final lm loss {report['lm_loss_expert_parallel'][-1]:.4f}"
              f" expert-parallel, {report['lm_loss_single_process'][-1]:.4f} one process; "
              f"largest gap {report['lm_loss_max_abs_diff']:.2e}")  # fmt: skip
    for p in report.get("placement_on_lm_routing", []):
        n = p["slots_measured"]
        print(f"    layer {p['layer']} routing, held-out steps: slots leaving their rank "
              f"{p['cross_rank_slots_contiguous'] / n:.1%} contiguous, "
              f"{p['cross_rank_slots_greedy'] / n:.1%} greedy placement {p['greedy_rank_E']}")  # fmt: skip
    print(f"  wall time {report['wall_s']:.1f} s")
