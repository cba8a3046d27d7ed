"""The arena: every router trained on the same tasks, seeded, at equal active parameters and tokens.

    rows = run_arena(ArenaConfig.quick())      # one dict per (router, task)
    print(format_table(rows))

Two tasks:
- "lm": the byte-level language model of chapter 07 (`minimoe.lm`: 2 blocks, D = F = 64, E = 8,
  K = 2 by default), every router on the same batches (same seed) for the same steps. Each
  router's active expert weights per token are those of top-2 of 8 F-wide experts (see each
  layer: hash routes to one 2F-wide expert, PR-MoE an F-wide MLP plus one expert, fine-grained
  3 of 15 experts of F/2 plus one shared, expert choice and Soft MoE 2 experts' compute per
  token on average). The aux loss (0.01) and z-loss (0.001) of `minimoe.lm.train` apply to every
  router that returns them. `causal` is measured on the trained model (`measure_causality` on
  validation windows at three cuts), never declared.
- "collapse": chapter 04's collapse lab (`minimoe.collapse`) with no balancing loss at all (the
  setting in which token choice collapses), so it shows which routers resist the collapse
  without help. Its tokens have no ids and no sequence: hash routing and per-position expert
  choice do not apply there (left out).

Columns: val_loss (lm: nats per byte; collapse: MSE over the target variance), tokens_per_s
(training tokens over training seconds, on this machine, under whatever else runs on it),
max_mean_load (the busiest expert's share over the mean, averaged over MoE layers, on
validation data in eval mode), drop_rate, dead_experts (summed over layers), causal, leak,
params_total, params_active. What each router's statistics mean is in its layer's docstring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from minimoe.capacity import assign_slots, expert_capacity
from minimoe.zoo.causality import measure_causality
from minimoe.zoo.layers import ROUTERS, inactive_params
from minimoe.zoo.reroute import reroute_slots

__all__ = [
    "ArenaConfig",
    "LM_ROUTERS",
    "COLLAPSE_ROUTERS",
    "drop_sweep",
    "format_table",
    "run_arena",
]

LM_ROUTERS = ROUTERS
# Left out of the collapse task: hash and per-position expert choice need token ids and
# sequences, which it has not; PEER's point is many tiny experts, and the task's 8 experts would
# make it a dense layer of 8 hidden neurons (every expert retrieved by every token).
COLLAPSE_ROUTERS = tuple(r for r in ROUTERS if r not in ("hash", "expert_choice_causal", "peer"))
# the capacity a rerouting layer works under (the other routers are dropless or balanced)
REROUTE_CAPACITY = {"capacity_formula": "megatron", "capacity_factor": 1.0}
# PEER in the LM task at the paper's head count (arXiv 2407.04153: h = 8 heads of k = 16) over
# 32 x 32 = 1024 singleton experts: h * k = 128 hidden neurons per token, as top-2 of F = 64.
PEER_LM = {"n_experts": 1024, "top_k": 16, "router_options": {"heads": 8}}


@dataclass(frozen=True)
class ArenaConfig:
    """How long and how big the arena's runs are.

    Args:
        lm_steps, lm_batch: training steps and sequences per step of the LM task.
        seq_len: bytes per sequence.
        corpus_bytes: bytes of the standard-library corpus read (None: all).
        eval_batches: validation batches (of lm_batch windows) for the LM's val_loss.
        collapse_steps: training steps of the collapse task.
        seed: the training seed of every run.
        lm_lr: peak learning rate of the LM.
    """

    lm_steps: int = 600
    lm_batch: int = 32
    seq_len: int = 64
    corpus_bytes: int | None = 600_000
    eval_batches: int = 8
    collapse_steps: int = 400
    seed: int = 0
    lm_lr: float = 1e-2

    @classmethod
    def quick(cls, seed: int = 0) -> ArenaConfig:
        """A few minutes on a 2-core CPU: the ranking is noisy, the plumbing is all there."""
        return cls(lm_steps=80, lm_batch=16, corpus_bytes=200_000, eval_batches=4,
                   collapse_steps=120, seed=seed)  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("lm_steps", "lm_batch", "seq_len", "eval_batches", "collapse_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")


def _lm_config(router: str, seq_len: int):
    from minimoe.lm.model import LMConfig

    extra = {"reroute": REROUTE_CAPACITY, "peer": PEER_LM}.get(router, {})
    return LMConfig(seq_len=seq_len, router=router, **extra)


@torch.no_grad()
def _routing_summary(model, idx_BS: torch.Tensor) -> dict:
    """Balance statistics of every MoE layer on one validation batch, in eval mode."""
    was = model.training
    model.eval()
    _, results = model(idx_BS)
    model.train(was)
    stats = [r.stats for r in results]
    return {
        "max_mean_load": sum(s.max_over_mean for s in stats) / len(stats),
        "drop_rate": sum(s.drop_rate for s in stats) / len(stats),
        "dead_experts": sum(s.dead_experts for s in stats),
        "entropy": sum(s.entropy for s in stats) / len(stats),
    }


def run_lm(router: str, acfg: ArenaConfig, corpus, progress: bool = False) -> tuple[dict, object]:
    """Train the tiny LM with `router`; returns (its row, the trained model)."""
    from minimoe.lm.model import TinyLM, count_params
    from minimoe.lm.train import TrainConfig, train

    cfg = _lm_config(router, acfg.seq_len)
    torch.manual_seed(acfg.seed)
    model = TinyLM(cfg)
    tcfg = TrainConfig(
        steps=acfg.lm_steps,
        batch_size=acfg.lm_batch,
        lr=acfg.lm_lr,
        warmup=max(1, acfg.lm_steps // 20),
        eval_every=0,
        eval_batches=acfg.eval_batches,
        seed=acfg.seed,
    )
    res = train(model, corpus, tcfg, progress=progress)
    S = acfg.seq_len
    val = corpus.val_U8
    starts = torch.linspace(0, val.numel() - S - 1, acfg.lm_batch).long()
    idx_BS = val[starts[:, None] + torch.arange(S)].long()
    summary = _routing_summary(model, idx_BS)
    cuts = sorted({max(1, S // 4), S // 2, max(1, 3 * S // 4)})
    leak = measure_causality(model, idx_BS[:8], positions=cuts, seed=acfg.seed)
    total, active = count_params(model)
    row = {
        "task": "lm",
        "router": router,
        "val_loss": res.val_loss,
        "tokens_per_s": res.tokens_seen / max(res.wall_s, 1e-9),
        **summary,
        "causal": leak.causal,
        "leak": leak.leak,
        "params_total": total,
        "params_active": active,
        "steps": res.steps,
        "tokens": res.tokens_seen,
        "train_s": res.wall_s,
    }
    return row, model


def run_collapse(router: str, acfg: ArenaConfig) -> dict:
    """Train the collapse lab's model with `router` and no balancing; returns its row."""
    from minimoe.collapse.lab import BATCH, Setting, build_model, run_setting
    from minimoe.collapse.task import TaskConfig, make_task

    options = None
    setting = Setting(f"{router}", router=router, router_options=options)
    if router == "reroute":
        setting = replace(setting, capacity_factor=REROUTE_CAPACITY["capacity_factor"])
    task = make_task(TaskConfig())
    res = run_setting(setting, seed=acfg.seed, steps=acfg.collapse_steps, record=False, task=task)
    model = build_model(setting, task, acfg.seed)
    total = sum(p.numel() for p in model.parameters())
    f = res.final
    return {
        "task": "collapse",
        "router": router,
        "val_loss": f["val_loss"],
        "tokens_per_s": acfg.collapse_steps * BATCH / max(res.seconds, 1e-9),
        "max_mean_load": f["max_over_mean"],
        "drop_rate": f["drop_rate"],
        "dead_experts": f["dead_experts"],
        "entropy": f["entropy"],
        "causal": None,  # independent tokens: no sequence to leak along
        "leak": None,
        "params_total": total,
        "params_active": total - inactive_params(model.moe),
        "steps": acfg.collapse_steps,
        "tokens": acfg.collapse_steps * BATCH,
        "train_s": res.seconds,
    }


def drop_sweep(
    probs_TE: torch.Tensor,
    expert_TK: torch.Tensor,
    capacity_factors=(0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
    policies=("position", "k_major", "probs"),
) -> list[dict]:
    """Drop rate of each drop policy and of rerouting, at each capacity factor, on one routing.

    C = ceil(T * K / E * cf) (the Megatron formula); rows {capacity_factor, capacity, policy,
    drop_rate}, with policy "reroute" for `reroute_slots`.
    """
    T, E = probs_TE.shape
    K = expert_TK.shape[1]
    gate_TK = probs_TE.gather(1, expert_TK)
    rows = []
    for cf in capacity_factors:
        C = expert_capacity(T, E, K, "megatron", cf)
        for policy in policies:
            keep, _ = assign_slots(expert_TK, gate_TK, E, C, policy)
            rows.append({"capacity_factor": cf, "capacity": C, "policy": policy,
                         "drop_rate": 1 - float(keep.double().mean())})  # fmt: skip
        _, keep = reroute_slots(probs_TE, expert_TK, C)
        rows.append({"capacity_factor": cf, "capacity": C, "policy": "reroute",
                     "drop_rate": 1 - float(keep.double().mean())})  # fmt: skip
    return rows


def run_arena(
    acfg: ArenaConfig,
    *,
    routers: tuple[str, ...] | list[str] = ROUTERS,
    tasks: tuple[str, ...] = ("lm", "collapse"),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run every (router, task); returns {"rows": [...], "drop_sweep": [...], "config": {...}}."""
    from tqdm.auto import tqdm

    from minimoe.lm.data import build_corpus

    for r in routers:
        if r not in ROUTERS:
            raise ValueError(f"unknown router {r!r}; choose from {ROUTERS}")
    jobs = [("lm", r) for r in routers if "lm" in tasks and r in LM_ROUTERS]
    jobs += [("collapse", r) for r in routers if "collapse" in tasks and r in COLLAPSE_ROUTERS]
    corpus = build_corpus(max_bytes=acfg.corpus_bytes) if "lm" in tasks else None
    rows, sweep = [], []
    start = time.perf_counter()
    with tqdm(total=len(jobs), desc="zoo arena", unit="run", disable=not progress) as bar:
        for task, router in jobs:
            bar.set_postfix_str(f"{task}: {router}")
            if task == "lm":
                row, model = run_lm(router, acfg, corpus)
                if router == "token_choice":
                    sweep = _sweep_from_model(model, corpus, acfg)
            else:
                row = run_collapse(router, acfg)
            rows.append(row)
            if log is not None:
                log(f"{task:>8} {router:<20} val {row['val_loss']:.3f}  {row['train_s']:.1f} s")
            bar.update(1)
    return {
        "rows": rows,
        "drop_sweep": sweep,
        "config": {**acfg.__dict__},
        "wall_s": time.perf_counter() - start,
    }


@torch.no_grad()
def _sweep_from_model(model, corpus, acfg: ArenaConfig) -> list[dict]:
    """The drop sweep on the trained token-choice LM's first MoE layer, on validation bytes."""
    S = acfg.seq_len
    val = corpus.val_U8
    starts = torch.linspace(0, val.numel() - S - 1, acfg.lm_batch).long()
    idx_BS = val[starts[:, None] + torch.arange(S)].long()
    was = model.training
    model.eval()
    _, results = model(idx_BS)
    model.train(was)
    r = results[0].routing
    return drop_sweep(r.probs_TE, r.expert_TK)


def _fmt(value, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec)


COLUMNS = (
    ("router", "<20", "router"),
    ("val_loss", ".3f", "val loss"),
    ("tokens_per_s", ".0f", "tokens/s"),
    ("max_mean_load", ".2f", "max/mean"),
    ("drop_rate", ".1%", "drop"),
    ("dead_experts", "d", "dead"),
    ("causal", "", "causal"),
    ("leak", ".1e", "leak"),
    ("params_total", ",d", "params"),
    ("params_active", ",d", "active"),
)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows as a plain-text (or markdown) table, one block per task."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        block = [r for r in rows if r["task"] == task]
        cells = [[_fmt(r[key], spec if key != "router" else "") for key, spec, _ in COLUMNS]
                 for r in block]  # fmt: skip
        heads = [h for _, _, h in COLUMNS]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
        if markdown:
            out.append(f"**{task}**\n")
            out.append("| " + " | ".join(heads) + " |")
            out.append("|" + "|".join("---" for _ in heads) + "|")
            out += ["| " + " | ".join(c) + " |" for c in cells]
        else:
            out.append(f"task: {task}")
            line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                             for i, (h, w) in enumerate(zip(heads, widths)))  # fmt: skip
            out += [line, "-" * len(line)]
            out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths)))
                    for row in cells]  # fmt: skip
        out.append("")
    return "\n".join(out)


def format_sweep(sweep: list[dict], markdown: bool = False) -> str:
    """Drop rate by capacity factor (rows) and policy (columns)."""
    if not sweep:
        return ""
    policies = list(dict.fromkeys(r["policy"] for r in sweep))
    cfs = list(dict.fromkeys(r["capacity_factor"] for r in sweep))
    get = {(r["capacity_factor"], r["policy"]): r["drop_rate"] for r in sweep}
    heads = ["cf"] + policies
    rows = [[f"{cf:g}"] + [f"{get[cf, p]:.1%}" for p in policies] for cf in cfs]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    lines = ["  ".join(h.rjust(9) for h in heads)]
    return "\n".join(lines + ["  ".join(c.rjust(9) for c in r) for r in rows])
