"""`python -m minimoe train`: train the tiny MoE language model (or its dense twin) on stdlib text.

It prints the corpus, the model's total and active parameters, the unigram baseline, a progress
bar, then the validation loss against the baseline and the routing statistics of each MoE layer.
The defaults are sized for about 50 seconds of training on one core of an idle 2-core CPU,
with a 60-second training budget (`--time-limit`) so that a busy machine stops in time too.

One torch thread by default: the matrices are 64 wide, so a second thread buys little (about 15%
on an idle 2-core machine), and threads that wait for each other on cores shared with other
programs made a step 10-20 times slower in our measurements. `--threads` changes it.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from minimoe.config import AUX_LOSSES, CAPACITY_FORMULAS, GATINGS, NOISES
from minimoe.lm.checkpoint import save_checkpoint
from minimoe.lm.data import build_corpus, unigram_loss
from minimoe.lm.model import DEFAULT_EXPERTS_IMPL, EXPERTS_IMPLS, LMConfig, TinyLM, count_params
from minimoe.lm.model import dense_twin as make_dense_twin
from minimoe.lm.train import TrainConfig, TrainResult, train

_M, _T = LMConfig(), TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `minimoe train`."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    run = parser.add_argument_group("run")
    run.add_argument("--steps", type=int, default=_T.steps, help="optimiser steps (at most)")
    run.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="stop after this many seconds of training (0 = no limit)",
    )
    run.add_argument("--batch-size", type=int, default=_T.batch_size)
    run.add_argument("--lr", type=float, default=_T.lr, help="peak learning rate (AdamW)")
    run.add_argument("--aux-coef", type=float, default=_T.aux_coef, help="load-balancing weight")
    run.add_argument("--z-coef", type=float, default=_T.z_coef, help="router z-loss weight")
    run.add_argument("--eval-every", type=int, default=_T.eval_every)
    run.add_argument("--seed", type=int, default=_T.seed)
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    run.add_argument("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda'")
    run.add_argument("--max-bytes", type=int, default=None, help="read at most this much text")
    run.add_argument("--save", metavar="PATH", default=None, help="save a checkpoint here")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    model = parser.add_argument_group("model")
    model.add_argument("--dense", action="store_true", help="train the dense twin instead")
    model.add_argument(
        "--experts-impl", choices=sorted(EXPERTS_IMPLS), default=DEFAULT_EXPERTS_IMPL
    )
    model.add_argument("--seq-len", type=int, default=_M.seq_len)
    model.add_argument("--d-model", type=int, default=_M.d_model)
    model.add_argument("--layers", type=int, default=_M.n_layers)
    model.add_argument("--heads", type=int, default=_M.n_heads)
    model.add_argument(
        "--moe-every", type=int, default=_M.moe_every, help="every n-th block is MoE"
    )
    model.add_argument("--experts", type=int, default=_M.n_experts)
    model.add_argument("--top-k", type=int, default=_M.top_k)
    model.add_argument("--d-ff", type=int, default=_M.d_ff, help="each expert's hidden size")
    model.add_argument("--gating", choices=GATINGS, default=_M.gating)
    model.add_argument("--noise", choices=NOISES, default=_M.noise)
    model.add_argument("--capacity-formula", choices=CAPACITY_FORMULAS, default=_M.capacity_formula)
    model.add_argument("--capacity-factor", type=float, default=_M.capacity_factor)
    model.add_argument("--aux-loss", choices=AUX_LOSSES, default=_M.aux_loss)


def _configs(args: argparse.Namespace) -> tuple[LMConfig, TrainConfig]:
    cfg = LMConfig(
        seq_len=args.seq_len,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        moe_every=args.moe_every,
        n_experts=args.experts,
        top_k=args.top_k,
        d_ff=args.d_ff,
        gating=args.gating,
        noise=args.noise,
        capacity_formula=args.capacity_formula,
        capacity_factor=args.capacity_factor,
        aux_loss=args.aux_loss,
    )
    if args.dense:
        cfg = make_dense_twin(cfg)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=min(_T.warmup, args.steps // 10),
        aux_coef=args.aux_coef,
        z_coef=args.z_coef,
        eval_every=args.eval_every,
        seed=args.seed,
        time_limit_s=args.time_limit or None,
        device=device,
    )
    return cfg, tcfg


def describe_model(cfg: LMConfig, total: int, active: int) -> str:
    """One line: the architecture and its total / active parameters."""
    if cfg.moe_every == 0:
        ffn = f"dense FFN (d_ff {cfg.d_ff}, {cfg.activation})"
    else:
        where = "every block" if cfg.moe_every == 1 else f"one block in {cfg.moe_every}"
        ffn = (
            f"MoE in {where}: {cfg.n_experts} experts, top-{cfg.top_k}, d_ff {cfg.d_ff} "
            f"({cfg.activation}, {cfg.gating} gating, {cfg.capacity_formula})"
        )
    return (
        f"model: {cfg.n_layers} blocks, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"context {cfg.seq_len} bytes, {ffn}\n"
        f"  parameters: {total:,} total, {active:,} active per token"
    )


def routing_report(result: TrainResult, last: int = 50, top_k: int = 1) -> str:
    """A table of each MoE layer's routing statistics, averaged over the last steps.

    `top_k` (K) only sets the collapsed value of max/mean quoted in the header: E / K, when
    every token's K choices land on the same K experts."""
    rows = result.records.summary(last)
    if not rows:
        return "routing: none (dense model)"
    n = min(last, len(result.records))
    E = len(rows[0]["load_fraction_E"])
    lines = [
        f"routing, mean of the last {n} steps (load max/mean 1 = even, {E / top_k:g} = all "
        f"on the same {top_k} expert{'s' * (top_k != 1)}; "
        f"entropies at most ln {E} = {math.log(E):.2f}):",
        "  layer  load max/mean  dead experts  router entropy  load entropy  drop rate"
        "    aux      z",
    ]
    for r in rows:
        lines.append(
            f"  {r['layer']:>5}  {r['max_over_mean']:>13.2f}  {r['dead_experts']:>12.1f}  "
            f"{r['entropy']:>14.3f}  {r['load_entropy']:>12.3f}  {r['drop_rate']:>9.3f}  "
            f"{r['aux']:>5.3f}  {r['z']:>5.2f}"
        )
        shares = " ".join(f"{f:.2f}" for f in r["load_fraction_E"])
        lines.append(f"         load share per expert: {shares}")
    return "\n".join(lines)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Train as the arguments say and print the results. Returns the exit code."""
    t_start = time.perf_counter()
    try:
        cfg, tcfg = _configs(args)
    except ValueError as err:
        parser.error(str(err))
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    corpus = build_corpus(max_bytes=args.max_bytes)
    print(corpus.describe())
    torch.manual_seed(args.seed)
    model = TinyLM(cfg, experts_fn=EXPERTS_IMPLS[args.experts_impl])
    total, active = count_params(model)
    print(describe_model(cfg, total, active))
    impl = "" if cfg.moe_every == 0 else f", experts implementation {args.experts_impl}"
    print(f"  device {tcfg.device}, {torch.get_num_threads()} torch thread(s){impl}")
    baseline = unigram_loss(corpus)
    print(
        f"unigram baseline: {baseline:.3f} nats/byte (validation bytes, training byte frequencies)"
    )
    limit = f", at most {tcfg.time_limit_s:g} s" if tcfg.time_limit_s else ""
    print(f"training: {tcfg.steps} steps of {tcfg.batch_size} x {cfg.seq_len} bytes{limit}")
    result = train(model, corpus, tcfg, progress=not args.no_progress)
    h = result.history
    curve = ", ".join(f"{s}: {v:.3f}" for s, v in zip(h.eval_step, h.val_loss))
    print(
        f"done: {result.steps} steps (stopped by {result.stopped_by}), "
        f"{result.tokens_seen:,} tokens, {result.wall_s:.1f} s training, "
        f"{time.perf_counter() - t_start:.1f} s in all"
    )
    print(f"val loss by step: {curve}")
    print(
        f"final val loss {result.val_loss:.3f} nats/byte vs unigram {baseline:.3f}: "
        f"{baseline - result.val_loss:.3f} below it ({result.val_loss / baseline:.0%} of it); "
        f"last train lm loss {h.lm_loss[-1]:.3f}, aux {h.aux_loss[-1]:.3f}, z {h.z_loss[-1]:.3f}"
    )
    print(routing_report(result, top_k=cfg.top_k))
    if args.save:
        path = save_checkpoint(args.save, model, cfg, step=result.steps, val_loss=result.val_loss)
        print(f"saved checkpoint to {path}")
    return 0
