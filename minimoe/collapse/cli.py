"""`python -m minimoe collapse-lab`: collapse a router, then recover it with each remedy.

Prints, per setting, the final routing statistics on the validation tokens (max/mean load,
dead experts, router entropy, drop rate, z-loss, largest logit), the validation loss and the
wall time of its training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minimoe.collapse.lab import BASELINES, SETTINGS, STEPS, format_table, run_lab


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `minimoe collapse-lab`."""
    names = [s.name for s in SETTINGS]
    parser.add_argument(
        "--settings",
        nargs="+",
        metavar="NAME",
        choices=names + [s.name for s in BASELINES],
        default=names,
        help=f"which settings to run, in order (default: all of {names}; also "
        f"{[s.name for s in BASELINES]})",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--steps", type=int, default=STEPS, help=f"training steps per setting (default {STEPS})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the shapes are tiny, more threads only add overhead)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the lab and print its table; returns the exit code."""
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run_lab(
        args.settings, seed=args.seed, steps=args.steps, progress=not args.no_progress
    )
    total = time.perf_counter() - start
    print(f"router collapse lab: seed {args.seed}, {args.steps} steps per setting")
    print(format_table(results))
    for res in results:
        print(f"  {res.name}: {res.setting.note}")
    print(f"total wall time {total:.1f} s ({torch.get_num_threads()} thread(s))")
    if args.json:
        rows = [
            {"setting": r.name, "seed": r.seed, "steps": r.steps, "seconds": r.seconds, **r.final}
            for r in results
        ]
        Path(args.json).write_text(json.dumps({"results": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
