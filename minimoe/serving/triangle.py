"""Cost, accuracy, performance: the tiny LM's dense twins and MoE variants measured side by side.

An MoE model is sold on one axis at a time: as accurate as a large dense model, as cheap per
token as a small one, as fast as its active parameters. MoE-CAP (Jiang et al. 2024, arXiv
2412.07067) argues that a serving setup rarely gets cost, accuracy and performance together, and
measures all three. This module does that for the course's tiny LM, on this machine:

- **accuracy**: the validation loss (nats/byte, lower is better) after the same training (same
  steps, batches, seed and learning rate for every model);
- **performance**: decode speed, new bytes per second for one sequence (batch 1, greedy, the KV
  cache of `minimoe.serving.generate`, every position fed one at a time so that all models,
  offloaded or not, run the same schedule), per second of the process's CPU time: on an idle
  machine that is the wall-clock speed, and on a busy one it still is what the decoding costs,
  where wall time also counts the waits for a core. Wall-clock speed is kept beside it. Both are
  the best of `repeats` runs taken round-robin over the models. (The offloaded model's reads
  are CPU work here: its experts' files stay in the operating system's page cache.)
- **cost**: the memory the model needs resident (float32 weights held in memory, plus the KV
  cache of one full context), and the compute per token (2 FLOPs per active parameter, the
  matmuls; attention's scores are left out, equal for all).

The contenders (`contenders`), from one MoE configuration (E experts, top-K, expert size F):
the **dense twin** with the MoE's active FFN size K*F (same FLOPs per token), the **wide dense**
model with E*F (the MoE's total FFN weights, all active), the MoE itself, the MoE with K = 1, the
MoE with 2E experts, and the MoE **offloaded**: its experts on disk and an LRU cache of a quarter
of them in memory (`minimoe.serving.offload.OffloadedLM`, same weights and same text as the
resident MoE, so the same loss).

`python -m minimoe triangle` runs it and writes the table and the figure.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from minimoe.lm.data import Corpus, build_corpus
from minimoe.lm.model import LMConfig, TinyLM, count_params, dense_twin
from minimoe.lm.train import TrainConfig, evaluate, train
from minimoe.serving.cache import LRUCache
from minimoe.serving.generate import generate
from minimoe.serving.offload import OffloadedLM
from minimoe.validate import check_int

__all__ = [
    "LESSON_CONFIG",
    "LESSON_TRAIN",
    "Contender",
    "TriangleRow",
    "contenders",
    "measure_triangle",
    "memory_bytes",
]

# Chapter 10's tiny LM and its training (the lesson's section 4 trains the same one).
LESSON_CONFIG = LMConfig(
    seq_len=64, d_model=48, n_layers=2, n_heads=4, n_experts=8, top_k=2, d_ff=48
)
LESSON_TRAIN = TrainConfig(steps=200, batch_size=16, lr=1e-2, warmup=20, eval_every=0)
FLOAT_BYTES = 4  # the tiny LM runs in float32
PROMPT = b"def parse(self, text):\n    "


@dataclass(frozen=True)
class Contender:
    """One model of the comparison.

    Attributes:
        name: its label in tables and figures.
        kind: "dense", "moe" or "offloaded".
        cfg: its `LMConfig`.
        cache_experts: for "offloaded", the experts its cache holds (of n_layers x E); else None.
    """

    name: str
    kind: str
    cfg: LMConfig
    cache_experts: int | None = None


def contenders(
    base: LMConfig = LESSON_CONFIG, *, cache_experts: int | None = None
) -> list[Contender]:
    """The dense twins and MoE variants of `base` (an MoE configuration), in display order.

    Args:
        base: the MoE model (moe_every >= 1, top_k < n_experts).
        cache_experts: the offloaded model's cache (default: a quarter of its experts, >= 1).

    Returns:
        dense twin (K*F), wide dense (E*F), the MoE, the MoE with K = 1, the MoE with 2E experts,
        and the MoE offloaded.
    """
    if not isinstance(base, LMConfig):
        raise TypeError(f"base must be an LMConfig, got {type(base).__name__}")
    if base.moe_every == 0 or base.router != "token_choice":
        raise ValueError("base must be a token-choice MoE configuration (moe_every >= 1)")
    if base.capacity_formula != "dropless":
        raise ValueError("base must be dropless: the offloaded runtime serves dropless layers only")
    E, K, F = base.n_experts, base.top_k, base.d_ff
    if K >= E:
        raise ValueError(f"base must route sparsely: top_k={K} is not below n_experts={E}")
    total_experts = base.n_moe_layers * E
    if cache_experts is None:
        cache_experts = max(1, total_experts // 4)
    cache_experts = check_int("cache_experts", cache_experts, low=1, high=total_experts)
    twin = dense_twin(base)
    return [
        Contender(f"dense, F={K * F} (active-matched)", "dense", twin),
        Contender(f"dense, F={E * F} (total-matched)", "dense", replace(twin, d_ff=E * F)),
        Contender(f"MoE E={E}, K={K}", "moe", base),
        Contender(f"MoE E={E}, K=1", "moe", replace(base, top_k=1)),
        Contender(f"MoE E={2 * E}, K={K}", "moe", replace(base, n_experts=2 * E)),
        Contender(
            f"MoE E={E}, K={K}, offloaded ({cache_experts}/{total_experts} cached)",
            "offloaded",
            base,
            cache_experts,
        ),
    ]


def memory_bytes(model: TinyLM, cache_experts: int | None = None) -> tuple[int, int]:
    """(weights, kv): bytes of weights held in memory, and of one full context's KV cache.

    With `cache_experts`, the experts live elsewhere and only that many of them are held, beside
    every other weight (attention, embeddings, norms, routers)."""
    cfg = model.cfg
    total, _ = count_params(model)
    weights = total * FLOAT_BYTES
    if cache_experts is not None:
        expert_params = [sum(p.numel() for p in m.experts.parameters()) for m in model.moe_layers]
        per_expert = expert_params[0] // cfg.n_experts
        weights -= sum(expert_params) * FLOAT_BYTES
        weights += cache_experts * per_expert * FLOAT_BYTES
    kv = 2 * cfg.n_layers * cfg.seq_len * cfg.d_model * FLOAT_BYTES
    return weights, kv


@dataclass
class TriangleRow:
    """One contender's measurements (see the module docstring for how each is taken).

    Attributes:
        name, kind, n_experts, top_k, d_ff: the contender.
        total_params, active_params: parameters (a tied head counted once), and those a token runs.
        flops_per_token: 2 * active_params.
        val_loss: nats/byte on the validation text.
        train_s: training seconds.
        tokens_per_s: decode speed in new bytes per CPU-second, best of the repeats;
            tokens_per_s_median: their median; tokens_per_s_wall: per wall-clock second, best.
        weight_bytes, kv_bytes: memory held (see `memory_bytes`); memory_bytes: their sum.
        hit_rate: the offloaded model's cache hit rate (None when resident).
        same_text: the offloaded model's text equals the resident one's (None when resident).
    """

    name: str
    kind: str
    n_experts: int
    top_k: int
    d_ff: int
    total_params: int
    active_params: int
    flops_per_token: int
    val_loss: float
    train_s: float
    tokens_per_s: float
    tokens_per_s_median: float
    tokens_per_s_wall: float
    weight_bytes: int
    kv_bytes: int
    memory_bytes: int
    hit_rate: float | None = None
    same_text: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _decoder(contender: Contender, model: TinyLM, workdir: Path):
    """(decode, hit_rate): a function that runs one greedy generation, built outside the timed
    region (an offloaded runtime writes its experts' files first), and its hit rate afterwards
    (None when resident). Each offloaded decoder starts with a cold cache."""
    if contender.cache_experts is None:
        return lambda n_new: generate(model, PROMPT, n_new, temperature=0.0, prefill="token"), None
    runtime = OffloadedLM(model, workdir, LRUCache(contender.cache_experts))
    return lambda n_new: runtime.generate(PROMPT, n_new, temperature=0.0), lambda: runtime.hit_rate


def measure_triangle(
    entries: list[Contender] | None = None,
    tcfg: TrainConfig = LESSON_TRAIN,
    *,
    corpus: Corpus | None = None,
    n_new: int = 48,
    repeats: int = 3,
    eval_batches: int = 16,
    progress: bool = True,
) -> list[TriangleRow]:
    """Train every contender the same way, then measure loss, decode speed and memory.

    Args:
        entries: the models (default `contenders()`); an "offloaded" entry reuses the weights
            of the resident entry with the same configuration, which must come first.
        tcfg: the training of every model (each starts from `torch.manual_seed(tcfg.seed)`).
        corpus: the text (default `build_corpus()`).
        n_new: bytes generated per decode measurement.
        repeats: decode measurements per model, taken round-robin over the models.
        eval_batches: validation batches of 32 windows for the loss.
        progress: show progress bars.

    Returns:
        One `TriangleRow` per entry, in order.
    """
    from tqdm.auto import tqdm

    entries = contenders() if entries is None else list(entries)
    if not entries or not all(isinstance(c, Contender) for c in entries):
        raise TypeError("entries must be a non-empty list of Contender")
    n_new = check_int("n_new", n_new, low=1)
    repeats = check_int("repeats", repeats, low=1)
    eval_batches = check_int("eval_batches", eval_batches, low=1)
    corpus = build_corpus() if corpus is None else corpus

    models: dict[int, TinyLM] = {}
    trained: dict[str, tuple[TinyLM, float, float]] = {}  # config key -> model, val loss, seconds
    for i, c in enumerate(tqdm(entries, desc="training", disable=not progress)):
        key = repr(c.cfg)
        if c.kind == "offloaded":
            if key not in trained:
                raise ValueError(f"{c.name!r}: list the resident model of its configuration first")
        elif key not in trained:
            torch.manual_seed(tcfg.seed)
            model = TinyLM(c.cfg)
            result = train(model, corpus, tcfg, progress=False)
            model.eval()
            loss = evaluate(model, corpus.val_U8, n_batches=eval_batches)
            trained[key] = (model, loss, result.wall_s)
        models[i] = trained[key][0]

    speeds: dict[int, list[float]] = {i: [] for i in range(len(entries))}  # per CPU-second
    wall_speeds: dict[int, list[float]] = {i: [] for i in range(len(entries))}
    hit_rates: dict[int, float | None] = {}
    texts: dict[int, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="minimoe_triangle_") as tmp:
        runs = [(r, i) for r in range(repeats) for i in range(len(entries))]
        for r, i in tqdm(runs, desc="decoding", disable=not progress):
            decode, hit_rate = _decoder(entries[i], models[i], Path(tmp) / f"run_{r}_{i}")
            cpu_start = time.process_time()
            out = decode(n_new)
            cpu_s = time.process_time() - cpu_start
            speeds[i].append(len(out.new) / cpu_s if cpu_s > 0 else float("inf"))
            wall_speeds[i].append(out.tokens_per_s)
            hit_rates[i] = None if hit_rate is None else hit_rate()
            texts[i] = out.new

    rows = []
    for i, c in enumerate(entries):
        model = models[i]
        _, loss, train_s = trained[repr(c.cfg)]
        total, active = count_params(model)
        weights, kv = memory_bytes(model, c.cache_experts)
        resident_text = next(
            (texts[j] for j, d in enumerate(entries) if d.kind != "offloaded" and d.cfg == c.cfg),
            None,
        )
        rows.append(
            TriangleRow(
                name=c.name,
                kind=c.kind,
                n_experts=c.cfg.n_experts,
                top_k=c.cfg.top_k,
                d_ff=c.cfg.d_ff,
                total_params=total,
                active_params=active,
                flops_per_token=2 * active,
                val_loss=loss,
                train_s=train_s,
                tokens_per_s=max(speeds[i]),
                tokens_per_s_median=statistics.median(speeds[i]),
                tokens_per_s_wall=max(wall_speeds[i]),
                weight_bytes=weights,
                kv_bytes=kv,
                memory_bytes=weights + kv,
                hit_rate=hit_rates[i],
                same_text=None if c.kind != "offloaded" else texts[i] == resident_text,
            )
        )
    return rows


def triangle_markdown(rows: list[TriangleRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | val loss | decode bytes per CPU-s | per wall-s | memory KB | params | active "
        "| hit rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hit = "" if r.hit_rate is None else f"{r.hit_rate:.1%}"
        lines.append(
            f"| {r.name} | {r.val_loss:.3f} | {r.tokens_per_s:.0f} | {r.tokens_per_s_wall:.0f} "
            f"| {r.memory_bytes / 1e3:.0f} "
            f"| {r.total_params:,} | {r.active_params:,} | {hit} |"
        )
    return "\n".join(lines)
