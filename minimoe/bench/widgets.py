"""`python -m minimoe.bench.widgets`: how fast the interactive explorers respond.

    python -m minimoe.bench.widgets                    # T=512 tokens, E=16 experts
    python -m minimoe.bench.widgets --json results/cpu/widgets.json

Builds the routing explorer and the capacity explorer at T tokens and E experts, moves every
control through several values (each value `--repeats` times, interleaved), and prints the
median and 90th-percentile update time per control. An update is everything one interaction
costs on the Python side: the routing or capacity maths (on one thread, as the explorers run
it) and the in-place update of the plotly figures (`fig.batch_update()`), as recorded in the
widget's `update_ms`. It runs headless: ipywidgets and plotly FigureWidgets update in Python
without a browser; drawing in the browser comes on top (plotly.js redraws in a few ms).
The target is 200 ms per interaction at T=512, E=16 on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import plotly
import torch

from minimoe.bench.timing import machine
from minimoe.viz.batches import TOKEN_BATCHES, token_batch
from minimoe.viz.capacity_explorer import capacity_explorer
from minimoe.viz.routing_explorer import routing_explorer

TARGET_MS = 200.0


def _routing_sweep(E: int) -> dict[str, list]:
    return {
        "n_experts": [E // 2, E, max(2, E // 4), E],
        "top_k": [1, 3, 4, 2],
        "gating": ["switch", "shazeer", "deepseek_v3", "mixtral"],
        "temperature": [0.3, 3.0, 1.0],
        "mode": ["training", "eval", "training"],
        "noise": ["shazeer", "jitter", "gumbel"],
        "noise_strength": [0.1, 1.0, 0.5],
        "batch": ["clustered", "skewed", "random"],
        "window": [64, 128, 0],
    }


CAPACITY_SWEEP = {
    "capacity_factor": [0.5, 1.25, 2.0, 1.0],
    "formula": ["megatron", "tutel", "switch", "dropless", "deepspeed"],
    "policy": ["k_major", "probs", "random", "batch_priority", "position"],
    "renormalize": [True, False],
    "batch": ["skewed", "balanced"],
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def drive(explorer, sweep: dict[str, list], repeats: int) -> dict[str, dict[str, float]]:
    """Set each control to each of its values, `repeats` rounds; summarise `update_ms`."""
    for samples in explorer.update_ms.values():
        samples.clear()
    for _ in range(repeats):
        for name, values in sweep.items():
            for value in values:
                explorer.controls[name].value = value
    rows = {}
    for name in sweep:
        ms = explorer.update_ms[name]
        rows[name] = {
            "n": len(ms),
            "median_ms": statistics.median(ms),
            "p90_ms": _percentile(ms, 0.9),
            "max_ms": max(ms),
        }
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m minimoe.bench.widgets`."""
    p.add_argument("--tokens", "-T", type=int, default=512, help="tokens per batch (512)")
    p.add_argument("--experts", "-E", type=int, default=16, help="experts (16)")
    p.add_argument("--repeats", type=int, default=5, help="rounds over every control (5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here as JSON")


def run(args: argparse.Namespace) -> int:
    """Build both explorers, drive them, print a table; 1 if a median misses the target."""
    T, E = args.tokens, args.experts
    if T < 1 or E < 4:
        raise SystemExit(f"need T >= 1 and E >= 4, got T={T}, E={E}")
    batches = {n: token_batch(n, T, 32, args.seed) for n in TOKEN_BATCHES}
    explorers = {
        "routing_explorer": (
            routing_explorer(batches=batches, n_experts=E, seed=args.seed, max_experts=E),
            _routing_sweep(E),
        ),
        "capacity_explorer": (
            capacity_explorer(n_experts=E, n_tokens=T, seed=args.seed),
            CAPACITY_SWEEP,
        ),
    }
    results = {}
    print(f"update latency per interaction, T={T} tokens, E={E} experts "
          f"(torch {torch.__version__}, plotly {plotly.__version__}, {args.repeats} rounds)")  # fmt: skip
    print(
        f"{'explorer':<18} {'control':<16} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}"
    )
    worst = 0.0
    for name, (explorer, sweep) in explorers.items():
        results[name] = drive(explorer, sweep, args.repeats)
        for control, row in results[name].items():
            worst = max(worst, row["median_ms"])
            print(f"{name:<18} {control:<16} {row['n']:>4} {row['median_ms']:>10.1f} "
                  f"{row['p90_ms']:>8.1f} {row['max_ms']:>8.1f}")  # fmt: skip
    verdict = "within" if worst <= TARGET_MS else "OVER"
    print(f"slowest median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"T": T, "E": E, "repeats": args.repeats, "target_ms": TARGET_MS,
                  "machine": machine(torch.device("cpu")), "results": results}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if worst <= TARGET_MS else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimoe.bench.widgets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
