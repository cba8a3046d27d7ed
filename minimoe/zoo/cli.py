"""`python -m minimoe zoo`: train every router of the zoo on the same tasks and compare them.

Prints one table per task (the byte-level LM, the collapse lab without balancing) and the drop
rate of each drop policy and of rerouting against the capacity factor; writes the rows as JSON
(`--json`), a markdown report (`--markdown`) and a figure (`--plot`, needs matplotlib), each with
the machine the numbers came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from minimoe.zoo.arena import ArenaConfig, format_sweep, format_table, run_arena
from minimoe.zoo.layers import ROUTERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `minimoe zoo`."""
    parser.add_argument("--quick", action="store_true",
                        help="short runs (a few minutes on a 2-core CPU)")  # fmt: skip
    parser.add_argument("--routers", nargs="+", metavar="NAME", choices=ROUTERS, default=list(ROUTERS),
                        help=f"which routers (default: all of {list(ROUTERS)})")  # fmt: skip
    parser.add_argument("--tasks", nargs="+", choices=("lm", "collapse"), default=["lm", "collapse"],
                        help="which tasks (default both)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--lm-steps", type=int, help="override the LM's training steps")
    parser.add_argument("--collapse-steps", type=int, help="override the collapse lab's steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the shapes are small)")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write a markdown report")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG figure (matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def machine() -> dict:
    """Where the numbers came from: CPU model (/proc/cpuinfo), cores, torch and Python versions."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def plot(rows: list[dict], path: str) -> None:
    """Validation loss and training speed of each router, one panel pair per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minimoe.viz import expert_colours

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    routers = list(dict.fromkeys(r["router"] for r in rows))
    colour = dict(zip(routers, expert_colours(len(routers))))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 3.2 + 2.2 * len(tasks)), squeeze=False)
    units = {"lm": "val loss (nats/byte)", "collapse": "val loss (MSE / variance)"}
    for i, task in enumerate(tasks):
        block = [r for r in rows if r["task"] == task]
        names = [r["router"] for r in block]
        for j, (key, label) in enumerate([("val_loss", units.get(task, "val loss")),
                                          ("tokens_per_s", "training tokens / s")]):  # fmt: skip
            ax = axes[i][j]
            values = [r[key] for r in block]
            ax.barh(names, values, color=[colour[n] for n in names])
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.set_title(f"{task}: {label}", fontsize=10)
            if key == "val_loss":
                lo, hi = min(values), max(values)
                ax.set_xlim(
                    max(0.0, lo - 0.15 * (hi - lo + 1e-9) - 0.05),
                    hi + 0.05 * (hi - lo + 1e-9) + 0.01,
                )
            for y, (v, r) in enumerate(zip(values, block)):
                note = f"{v:.3f}" if key == "val_loss" else f"{v:,.0f}"
                if key == "val_loss" and r.get("causal") is False:
                    note += "  (not causal)"
                ax.text(v, y, " " + note, va="center", fontsize=8)
            ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_report(result: dict, info: dict) -> str:
    rows = result["rows"]
    parts = [
        "# Routing zoo arena",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, "
        f"{info['machine']['threads']} torch thread(s), torch {info['machine']['torch']}, "
        f"Python {info['machine']['python']}; load average at the end "
        f"{info['machine']['load_average']}  ",
        f"Wall time: {result['wall_s']:.0f} s; config: `{result['config']}`",
        "",
        format_table(rows, markdown=True),
    ]
    if result["drop_sweep"]:
        parts += [
            "**drop rate against capacity factor** (the trained token-choice LM's first MoE "
            "layer, validation bytes; C = ceil(T K / E cf))",
            "",
            format_sweep(result["drop_sweep"], markdown=True),
            "",
        ]
    return "\n".join(parts)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (without the output paths)."""
    words = ["python -m minimoe zoo"] + (["--quick"] if args.quick else [])
    if list(args.routers) != list(ROUTERS):
        words += ["--routers", *args.routers]
    if list(args.tasks) != ["lm", "collapse"]:
        words += ["--tasks", *args.tasks]
    words += ["--seed", str(args.seed), "--threads", str(args.threads)]
    for name in ("lm_steps", "collapse_steps"):
        if getattr(args, name):
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return " ".join(words)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the arena, print its tables, write the files asked for; returns the exit code."""
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    for name in ("lm_steps", "collapse_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    acfg = ArenaConfig.quick(args.seed) if args.quick else ArenaConfig(seed=args.seed)
    overrides = {k: getattr(args, k) for k in ("lm_steps", "collapse_steps") if getattr(args, k)}
    if overrides:
        acfg = ArenaConfig(**{**acfg.__dict__, **overrides})
    start = time.perf_counter()
    result = run_arena(acfg, routers=args.routers, tasks=tuple(args.tasks),
                       progress=not args.no_progress)  # fmt: skip
    info = {
        "command": _command(args),
        "machine": machine(),
        "total_s": time.perf_counter() - start,
    }
    print(f"routing zoo arena: seed {acfg.seed}, {'quick' if args.quick else 'full'} settings")
    print(format_table(result["rows"]))
    if result["drop_sweep"]:
        print("drop rate against capacity factor (token-choice LM, first MoE layer, val bytes):")
        print(format_sweep(result["drop_sweep"]))
    m = info["machine"]
    print(f"total wall time {info['total_s']:.1f} s on {m['cpu']} ({m['cores']} cores, "
          f"{m['threads']} thread(s), torch {m['torch']})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({**result, **info}, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown_report(result, info) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        plot(result["rows"], args.plot)
        print(f"wrote {args.plot}")
    return 0
