"""The training loop of the tiny MoE language model: AdamW, a progress bar, evaluation, a recorder.

    result = train(TinyLM(cfg), build_corpus(), TrainConfig(steps=300))
    result.history.val_loss, result.records.load_HLE()

The loss that is optimised is

    total = lm + aux_coef * aux + z_coef * z

where lm is the next-byte cross-entropy, and aux and z are the load-balancing loss and the router
z-loss averaged over the MoE layers (as MegaBlocks does, so 1.0 is still perfect balance for the
Switch form whatever the depth). The loss that is *reported*, in training and in evaluation, is
lm alone, with aux and z beside it: folding the aux loss into the reported loss (nanoGPT-style
code that returns one number, nanoMoE) makes a model look worse the harder it balances.
`evaluate` runs in eval mode (router noise off) under no_grad and restores the mode it found.

The learning rate warms up linearly for `warmup` steps, then follows a cosine down to a tenth
of `lr` (nanoGPT). With a wall-clock budget (`time_limit_s`) the schedule follows whichever is
further along, the steps or the time, so a run stopped by the clock has still cooled down:
this is what makes a dense-vs-MoE comparison at equal wall-clock fair. The clock counts training
steps only, not evaluations.

Routers with a DeepSeek-V3 selection bias are balanced without a loss after every step,
b += bias_rate * sign(mean_load - load) (arXiv 2408.15664), when `bias_rate` > 0; the load
counts the slots routed to each expert, before any capacity drops.

Layers with a per-step schedule (`minimoe.zoo`'s top-k warm-up) get `set_step(step, steps)`
before each training step (step 0-based); the trainer knows nothing else of any router.

Left out: gradient accumulation, mixed precision, learning-rate finders, distributed training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minimoe.layer import MoEResult
from minimoe.lm.data import Corpus, get_batch
from minimoe.lm.model import TinyLM
from minimoe.lm.recorder import RoutingRecorder


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        steps: optimiser steps (the most; `time_limit_s` may stop earlier).
        batch_size: sequences per step (each of the model's seq_len bytes).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decay of matrices (embeddings, attention, experts, routers);
            norms are not decayed.
        warmup: steps of linear warm-up.
        aux_coef, z_coef: weights of the load-balancing loss and of the z-loss in the total.
        bias_rate: the step of aux-loss-free bias balancing (routers with a selection bias only).
        grad_clip: clip the gradient norm to this (0 = no clipping).
        eval_every: evaluate every this many steps (and after the last); 0 = only at the end.
        eval_batches: validation batches per evaluation.
        seed: seeds the batches (and, through `torch.manual_seed`, dropout and router noise).
        time_limit_s: stop after this many seconds of training (evaluations not counted).
        device: "cpu", "cuda", ...
    """

    steps: int = 700
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 0.1
    warmup: int = 30
    aux_coef: float = 1e-2
    z_coef: float = 1e-3
    bias_rate: float = 1e-3
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0
    time_limit_s: float | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("aux_coef", "z_coef", "bias_rate", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 or None, got {self.time_limit_s}")


@dataclass
class History:
    """Per step: step, tokens_seen, wall_s (training seconds so far), lm_loss, aux_loss, z_loss,
    lr. Per evaluation: eval_step, eval_tokens_seen, eval_wall_s, val_loss."""

    step: list[int] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    z_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_tokens_seen: list[int] = field(default_factory=list)
    eval_wall_s: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        history: the losses over training (`History`).
        records: the `RoutingRecorder` of every step.
        val_loss: the last validation loss (lm only, nats/byte).
        steps: steps taken; tokens_seen: training tokens seen; wall_s: training seconds.
        stopped_by: "steps", "time" or "callback".
    """

    history: History
    records: RoutingRecorder
    val_loss: float
    steps: int
    tokens_seen: int
    wall_s: float
    stopped_by: str


def lm_loss(logits_BSV: torch.Tensor, y_BS: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats: the language-model loss, with nothing added."""
    return F.cross_entropy(logits_BSV.reshape(-1, logits_BSV.shape[-1]), y_BS.reshape(-1))


def router_losses(
    results: list[MoEResult], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux, z): the load-balancing loss and the z-loss averaged over MoE layers (0 if none)."""
    if not results:
        zero = like.new_zeros(())
        return zero, zero
    aux = torch.stack([r.aux_loss for r in results]).mean()
    z = torch.stack([r.z_loss for r in results]).mean()
    return aux, z


@torch.no_grad()
def evaluate(
    model: TinyLM,
    data_U8: torch.Tensor,
    *,
    batch_size: int = 32,
    n_batches: int = 8,
    device: str | torch.device | None = None,
) -> float:
    """Mean language-model loss (nats/byte) on evenly spaced windows of `data_U8`.

    Runs in eval mode (no router noise, no dropout) under no_grad, and puts the model back in
    the mode it was in. The windows are the same on every call, so evaluations compare.

    Args:
        model: a `TinyLM`.
        data_U8: 1-D uint8 bytes (usually `corpus.val_U8`).
        batch_size, n_batches: up to batch_size * n_batches windows of the model's seq_len.
        device: where to run (default: the model's device).

    Returns:
        The lm loss alone (no aux, no z).
    """
    S = model.cfg.seq_len
    if data_U8.dim() != 1 or data_U8.numel() < S + 1:
        raise ValueError(f"data_U8 must be 1-D with at least seq_len + 1 = {S + 1} bytes")
    device = device or next(model.parameters()).device
    n = min(batch_size * n_batches, data_U8.numel() - S)
    start_W = torch.linspace(0, data_U8.numel() - S - 1, n).long()
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        for chunk in start_W.split(batch_size):
            window_BS = data_U8[chunk[:, None] + torch.arange(S + 1)].long().to(device)
            logits_BSV, _ = model(window_BS[:, :-1])
            total += float(lm_loss(logits_BSV, window_BS[:, 1:])) * chunk.numel()
            count += chunk.numel()
    finally:
        model.train(was_training)
    return total / count


def _lr_at(tcfg: TrainConfig, step: int, wall_s: float) -> float:
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    done = (step - tcfg.warmup) / max(1, tcfg.steps - tcfg.warmup)
    if tcfg.time_limit_s is not None:
        done = max(done, wall_s / tcfg.time_limit_s)
    return tcfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0))))


def make_optimizer(model: TinyLM, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (2-D and up) and none on norm weights."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": tcfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95))


def _progress_bar(tcfg: TrainConfig, enabled: bool) -> tqdm:
    """A bar over what ends the run: the time budget in seconds if there is one, else the steps."""
    if tcfg.time_limit_s is None:
        return tqdm(total=tcfg.steps, disable=not enabled, desc="train", unit="step")
    return tqdm(total=float(tcfg.time_limit_s), disable=not enabled,
                desc=f"train ({tcfg.time_limit_s:.3g} s budget)", unit="s",
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")  # fmt: skip


def _postfix(step: int, lm: float, aux: float, val: float) -> str:
    return f"step {step}, lm {lm:.3f}, aux {aux:.3f}, val {val:.3f}"


def train(
    model: TinyLM,
    corpus: Corpus,
    tcfg: TrainConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, TinyLM, list[MoEResult], dict], bool | None] | None = None,
) -> TrainResult:
    """Train `model` on `corpus.train_U8`, evaluating on `corpus.val_U8`.

    Args:
        model: a `TinyLM` (moved to `tcfg.device`).
        corpus: from `build_corpus`.
        tcfg: the `TrainConfig`.
        progress: show a tqdm progress bar over the time budget (seconds) when there is one,
            else over the steps; its postfix: the step, lm loss, aux, val.
        callback: called after every step as callback(step, model, moe_results, info) with
            info = {"lm_loss", "aux_loss", "z_loss", "wall_s", "tokens_seen"}; returning True stops
            training.

    Returns:
        A `TrainResult`: the history, the routing records, the final validation loss.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    S = model.cfg.seq_len
    for name, data in (("train", corpus.train_U8), ("val", corpus.val_U8)):
        if data.numel() < S + 1:
            raise ValueError(f"the {name} split has {data.numel()} bytes, fewer than seq_len + 1")
    torch.manual_seed(tcfg.seed)
    model.to(tcfg.device).train()
    optimizer = make_optimizer(model, tcfg)
    generator = torch.Generator().manual_seed(tcfg.seed)
    moe_ids = [i for i in range(model.cfg.n_layers) if model.cfg.is_moe_layer(i)]
    recorder = RoutingRecorder(model.cfg.n_experts, moe_ids)
    history = History()
    eval_kw = dict(batch_size=tcfg.batch_size, n_batches=tcfg.eval_batches, device=tcfg.device)

    def run_eval(step: int, tokens: int, wall_s: float) -> float:
        val = evaluate(model, corpus.val_U8, **eval_kw)
        history.eval_step.append(step)
        history.eval_tokens_seen.append(tokens)
        history.eval_wall_s.append(wall_s)
        history.val_loss.append(val)
        return val

    bar = _progress_bar(tcfg, progress)
    wall_s, tokens, stopped_by, step, val = 0.0, 0, "steps", 0, float("nan")
    for step in range(1, tcfg.steps + 1):
        t0 = time.perf_counter()
        lr = _lr_at(tcfg, step - 1, wall_s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_BS, y_BS = get_batch(corpus.train_U8, tcfg.batch_size, S, generator)
        x_BS, y_BS = x_BS.to(tcfg.device), y_BS.to(tcfg.device)
        for layer in model.moe_layers:  # a per-step schedule (top-k warm-up), when a layer has one
            if hasattr(layer, "set_step"):
                layer.set_step(step - 1, tcfg.steps)
        logits_BSV, results = model(x_BS)
        lm = lm_loss(logits_BSV, y_BS)
        aux, z = router_losses(results, lm)
        total = lm + tcfg.aux_coef * aux + tcfg.z_coef * z
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        if tcfg.bias_rate > 0:
            for layer, r in zip(model.moe_layers, results):
                router = getattr(layer, "router", None)
                if getattr(router, "bias_E", None) is not None:
                    router.update_bias(r.stats.routed_E, tcfg.bias_rate)
        wall_s += time.perf_counter() - t0
        tokens += x_BS.numel()
        info = dict(lm_loss=lm.item(), aux_loss=aux.item(), z_loss=z.item())
        for key, value in [("step", step), ("tokens_seen", tokens), ("wall_s", wall_s)]:
            getattr(history, key).append(value)
        for key, value in info.items():
            getattr(history, key).append(value)
        history.lr.append(lr)
        recorder.record(step, results)
        out_of_time = tcfg.time_limit_s is not None and wall_s >= tcfg.time_limit_s
        if (
            tcfg.eval_every
            and step % tcfg.eval_every == 0
            and step < tcfg.steps
            and not out_of_time
        ):
            val = run_eval(step, tokens, wall_s)
        # the postfix is drawn with the next refresh, at tqdm's own rate: refreshing every step
        # would cost a redraw per step (in Jupyter, a widget message per step)
        bar.set_postfix_str(_postfix(step, info["lm_loss"], info["aux_loss"], val), refresh=False)
        if tcfg.time_limit_s is None:
            bar.update(1)
        else:  # the bar counts the budget's seconds, never past its end
            bar.update(min(wall_s, bar.total) - bar.n)
        if callback is not None:
            info.update(wall_s=wall_s, tokens_seen=tokens)
            if callback(step, model, results, info):
                stopped_by = "callback"
                break
        if out_of_time:
            stopped_by = "time"
            break
    val = run_eval(step, tokens, wall_s)
    # a run that ends by its time budget, its step count or its callback is complete: a bar left
    # short of its total would read as a crash (tqdm draws it red in Jupyter)
    bar.total = bar.n
    if getattr(bar, "container", None) is not None:  # Jupyter's bar widget keeps its own maximum
        bar.container.children[1].max = bar.n
    bar.set_postfix_str(_postfix(step, history.lm_loss[-1], history.aux_loss[-1], val))
    bar.close()
    return TrainResult(history, recorder, val, step, tokens, wall_s, stopped_by)
