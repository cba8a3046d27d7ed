"""`python -m minimoe offload`: serve the tiny LM with its experts on disk, under each cache policy.

For each policy (lru, lfu, prefetch, belady) and cache size it generates the same text with the
offloaded runtime, and prints one row: the hit rate the runtime measured and the one the
simulator predicts from the trace, the bytes it read from disk, its speed, and whether its text
is the resident model's. `--quick` is the small run (about a minute on a 2-core CPU, plus the
quick model's training the first time); `--json PATH` writes the rows with the machine's
description.

`--mixtral` adds the projection to Mixtral 8x7B on a 24 GB GPU (`minimoe.serving.projection`):
one table under independent routing, then tokens/s per policy against routing locality, for
the sticky-routing p calibrated on the Mixtral paper's Table 5 (layers 0, 31 and 15), on this
run's own trace of the tiny LM, and any `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from minimoe.lm.checkpoint import load_checkpoint
from minimoe.serving.offload import policy_table
from minimoe.serving.pretrained import tiny_model
from minimoe.serving.simulate import POLICIES

PROMPT = "def __init__(self, "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `minimoe offload`."""
    parser.add_argument(
        "--quick", action="store_true", help="the small run: 40 new bytes, caches of 2, 4, 8"
    )
    parser.add_argument("--prompt", default=PROMPT, help=f"the text to continue ({PROMPT!r})")
    parser.add_argument("--length", type=int, default=None, help="bytes to generate (96; 40 quick)")
    parser.add_argument(
        "--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="cache policies"
    )
    parser.add_argument(
        "--cache-sizes", nargs="+", type=int, default=None, metavar="N",
        help="experts the cache holds (default: 2 4 8 12 and all; quick: 2 4 8)",
    )  # fmt: skip
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature, 0 = greedy (0.8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--checkpoint", metavar="PATH", help="a `minimoe train --save` file")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    parser.add_argument(
        "--mixtral",
        action="store_true",
        help="also project the cache policies to Mixtral 8x7B on a 24 GB GPU over PCIe 4.0",
    )
    parser.add_argument(
        "--repeats", nargs="+", type=float, default=[], metavar="P",
        help="more sticky-routing p (in [0, 1]) for the Mixtral projection's locality table",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| policy | cache (of total) | hit rate measured | simulated | every hit/miss equal "
        "| loads | MB moved | bytes/s | same text |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['cache_experts']} / {r['total_experts']} "
            f"| {r['hit_rate_measured']:.3f} | {r['hit_rate_simulated']:.3f} | {r['hits_match']} "
            f"| {r['loads']} | {r['bytes_moved'] / 1e6:.2f} | {r['tokens_per_s']:.1f} "
            f"| {r['same_text_as_resident']} |"
        )
    return "\n".join(lines)


def format_projection(p: dict) -> str:
    """The Mixtral-on-24-GB projection as Markdown, assumptions first."""
    a = p["assumptions"]
    lines = [
        f"## {p['model']} on a {a['gpu_memory'] / 1e9:.0f} GB GPU, experts streamed over a "
        f"{a['link_bandwidth'] / 1e9:.1f} GB/s link",
        "",
        f"Assumptions: bf16 weights; {p['resident_bytes'] / 1e9:.2f} GB of non-expert weights "
        f"and a {a['context_len']}-position KV cache ({p['kv_bytes'] / 1e9:.2f} GB) resident, "
        f"{a['overhead'] / 1e9:.0f} GB runtime overhead; {p['cache_experts']} of "
        f"{p['total_experts']} experts ({p['expert_bytes'] / 1e6:.0f} MB each) fit; routing "
        f"{a['routing']}; batch 1; copies not overlapped with compute; GPU memory "
        f"{a['gpu_bandwidth'] / 1e9:.0f} GB/s.",
        "",
        "| policy | hit rate | experts loaded per token | transfer s/token | compute s/token "
        "| tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        lines.append(
            f"| {r['policy']} | {r['hit_rate']:.3f} | {r['loads_per_token']:.1f} "
            f"| {r['transfer_s_per_token']:.3f} | {r['compute_s_per_token']:.3f} "
            f"| {r['tokens_per_s']:.2f} |"
        )
    return "\n".join(lines)


def format_locality(scenarios: list[tuple[str, dict]]) -> str:
    """Tokens/s (and hit rate) per policy against routing locality, one row per projection."""
    policies = [r["policy"] for r in scenarios[0][1]["rows"]]
    lines = [
        "| routing | p | repeat rate | "
        + " | ".join(f"{name} tokens/s (hit rate)" for name in policies)
        + " |",
        "|---|---|---|" + "---|" * len(policies),
    ]
    for label, p in scenarios:
        cells = " | ".join(f"{r['tokens_per_s']:.2f} ({r['hit_rate']:.3f})" for r in p["rows"])
        lines.append(f"| {label} | {p['repeat']:.3f} | {p['repeat_rate']:.3f} | {cells} |")
    return "\n".join(lines)


def locality_projections(trace, extra: list[float]) -> list[tuple[str, dict]]:
    """The Mixtral projection under independent routing and sticky routing calibrated on the
    Mixtral paper's Table 5, on the tiny LM's `trace` (when its E and K allow a fit) and at the
    `extra` p."""
    from minimoe.serving.projection import mixtral_repeat, offload_projection
    from minimoe.serving.simulate import fit_repeat, repeat_rate

    scenarios = [("independent", offload_projection())]
    sticky = [(f"Mixtral layer {n} (Table 5)", mixtral_repeat(n)) for n in (0, 31, 15)]
    E, K = trace.n_experts, trace.top_k
    if len(trace) >= 2 and 2 * K <= E:
        rate = repeat_rate(trace)
        sticky.append((f"tiny LM's trace (E={E}, K={K}, rate {rate:.3f})", fit_repeat(E, K, rate)))
    sticky += [(f"p = {p:g}", p) for p in extra]
    for label, p in sorted(sticky, key=lambda item: item[1]):
        scenarios.append((label, offload_projection(routing="sticky", repeat=p)))
    return scenarios


def machine() -> dict:
    """A description of the machine, stored with the results."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the policy table; returns the exit code (1 if any run disagrees)."""
    length = args.length if args.length is not None else (40 if args.quick else 96)
    if length < 1:
        parser.error(f"--length must be >= 1, got {length}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not args.prompt:
        parser.error("--prompt must not be empty")
    if any(not 0.0 <= p <= 1.0 for p in args.repeats):
        parser.error(f"--repeats must be in [0, 1], got {args.repeats}")
    if args.repeats and not args.mixtral:
        parser.error("--repeats applies to the Mixtral projection: add --mixtral")
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _, _ = load_checkpoint(args.checkpoint)
        model.eval()
        source = args.checkpoint
    else:
        model, info = tiny_model(progress=not args.no_progress)
        source = f"quick tiny LM ({info['steps']} steps, val loss {info['val_loss']:.3f})"
    total = model.cfg.n_moe_layers * model.cfg.n_experts
    default = (
        [n for n in (2, 4, 8) if n < total]
        if args.quick
        else [n for n in (2, 4, 8, 12) if n < total] + [total]
    )
    sizes = args.cache_sizes or default
    if any(n < 0 for n in sizes):
        parser.error("--cache-sizes must be >= 0")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minimoe-offload-") as directory:
        rows, resident = policy_table(
            model,
            directory,
            args.prompt.encode(),
            length,
            policies=tuple(args.policies),
            cache_sizes=tuple(sizes),
            temperature=args.temperature,
            seed=args.seed,
            progress=not args.no_progress,
        )
    wall = time.perf_counter() - start
    print(f"model: {source}; {total} experts ({model.cfg.n_moe_layers} MoE layers x "
          f"{model.cfg.n_experts}), top-{model.cfg.top_k}")  # fmt: skip
    print(f"resident text: {resident.text!r}")
    print(f"resident speed: {resident.tokens_per_s:.1f} bytes/s (all experts in memory)")
    table = format_table(rows)
    print(table)
    print(f"total wall time {wall:.1f} s ({torch.get_num_threads()} thread(s))")
    agree = all(r["hits_match"] and r["same_text_as_resident"] for r in rows)
    projection, locality, locality_text = None, None, ""
    if args.mixtral:
        locality = locality_projections(resident.trace, args.repeats)
        projection = locality[0][1]
        locality_text = (
            "\n\n### Routing locality: sticky routing, each token keeps each of its previous "
            "token's experts with probability p\n\nrepeat rate: the share of consecutive tokens "
            "sharing an expert in a layer, measured on the simulated trace (independent: 0.464 "
            "expected; Mixtral's Table 5, arXiv 2401.04088v1: 0.45-0.50 at layer 0, 0.62-0.67 "
            "at layer 15, 0.45-0.54 at layer 31). Same memory budget and links as above.\n\n"
            + format_locality(locality)
        )
        print(format_projection(projection) + locality_text)
    payload = {
        "command": "python -m minimoe offload"
        + (" --quick" if args.quick else "")
        + f" --length {length} --seed {args.seed} --temperature {args.temperature}"
        + (" --mixtral" if args.mixtral else "")
        + (" --repeats " + " ".join(f"{p:g}" for p in args.repeats) if args.repeats else ""),
        "model": source,
        "prompt": args.prompt,
        "resident_text": resident.text,
        "resident_tokens_per_s": resident.tokens_per_s,
        "new_bytes": length,
        "wall_s": wall,
        "machine": machine(),
        "rows": rows,
        "mixtral_24gb_projection": projection,
        "mixtral_24gb_locality": None
        if locality is None
        else [{"label": label, **p} for label, p in locality],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        m = payload["machine"]
        text = (
            f"# Offloaded tiny LM: cache policies\n\n`{payload['command']}` on {m['platform']} "
            f"({m['cpu_count']} CPUs, load average {m['load_average_1_5_15']} at the end), "
            f"{wall:.0f} s in all.\n\nResident text: {resident.text!r}\n\n{table}\n\n"
            "Hit rates, loads and bytes are exact (the simulator replays the trace the resident "
            "model recorded); the bytes/s column is wall-clock on a shared CPU, where the page "
            "cache makes disk reads cheap: read it as noise around the resident speed "
            f"({resident.tokens_per_s:.1f} bytes/s in this run).\n"
        )
        if projection is not None:
            text += "\n" + format_projection(projection) + locality_text + "\n"
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")
    if not agree:
        print("DISAGREEMENT: a run's text or hits differ from the resident model / the simulator")
        return 1
    return 0
