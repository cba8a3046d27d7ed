"""`python -m minimoe triangle`: cost, accuracy and performance of the tiny LM's dense twins and
MoE variants, trained alike and measured in one run (see `minimoe.serving.triangle`).

The default is chapter 10's model and training (200 steps of 16 x 64 bytes per model; about a
minute on a 2-core CPU); `--steps` trains longer. `--json`, `--markdown` and `--png` write the
rows (with the machine's description), the table and the figure.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from minimoe.serving.triangle import (
    LESSON_CONFIG,
    LESSON_TRAIN,
    contenders,
    measure_triangle,
    triangle_markdown,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `minimoe triangle`."""
    parser.add_argument(
        "--steps", type=int, default=LESSON_TRAIN.steps, help="training steps per model (200)"
    )
    parser.add_argument("--batch-size", type=int, default=LESSON_TRAIN.batch_size, help="(16)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batches (0)")
    parser.add_argument(
        "--cache-experts", type=int, default=None, help="the offloaded model's cache (4 of 16)"
    )
    parser.add_argument("--length", type=int, default=48, help="bytes per decode run (48)")
    parser.add_argument("--repeats", type=int, default=3, help="decode runs per model (3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    parser.add_argument("--png", metavar="PATH", help="also draw the triangle to PATH")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Train, measure, print the table; returns the exit code (1 if offloading changed the text)."""
    for name in ("steps", "batch_size", "length", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    total = LESSON_CONFIG.n_moe_layers * LESSON_CONFIG.n_experts
    if args.cache_experts is not None and not 1 <= args.cache_experts <= total:
        parser.error(f"--cache-experts must be in [1, {total}], got {args.cache_experts}")
    torch.set_num_threads(args.threads)
    tcfg = replace(LESSON_TRAIN, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    start = time.perf_counter()
    rows = measure_triangle(
        contenders(cache_experts=args.cache_experts),
        tcfg,
        n_new=args.length,
        repeats=args.repeats,
        progress=not args.no_progress,
    )
    wall_s = time.perf_counter() - start
    table = triangle_markdown(rows)
    print(table)
    print(f"\n{len(rows)} models, {tcfg.steps} steps each, {wall_s:.0f} s in all")
    if args.json:
        from minimoe.serving.cli_offload import machine

        Path(args.json).write_text(
            json.dumps(
                {
                    "command": "python -m minimoe triangle",
                    "base_config": LESSON_CONFIG.to_dict(),
                    "train": asdict(tcfg),
                    "decode_bytes": args.length,
                    "repeats": args.repeats,
                    "wall_s": wall_s,
                    "machine": machine(),
                    "rows": [r.to_dict() for r in rows],
                },
                indent=2,
            )
        )
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        from minimoe.viz.triangle import plot_triangle

        plot_triangle(rows).savefig(args.png, dpi=110)
    return 1 if any(r.same_text is False for r in rows) else 0
