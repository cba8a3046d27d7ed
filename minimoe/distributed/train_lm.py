"""The tiny language model of chapter 07 trained with expert parallelism, against one process.

`train_lm_rank` runs on every rank (under `launch`): the same seeded `TinyLM` on every rank, each
MoE block's `ffn` replaced by its `ExpertParallelMoE` twin (J = E / W experts per rank), the
same global batch drawn on every rank and split by rows (data parallelism for everything that is
not an expert), gradients synchronised by `sync_gradients`, AdamW on each rank's parameters.
`train_lm_single` trains the same model in one process on the whole batch, each rank's rows one
routing group (`group_size`, `aux_loss_per_group`) so that its balancing loss is the mean of
the ranks' losses, as in the distributed run.

The loss optimised is the trainer's (`minimoe.lm.train`): lm + aux_coef * aux + z_coef * z, with
AdamW as `make_optimizer` builds it; the learning rate is constant and the gradient is not
clipped (a clipped distributed run needs the global norm, which this module does not compute).
The curves are the mean lm loss over the whole batch at each step.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist

from minimoe.distributed.edp import sync_gradients
from minimoe.distributed.ep import ExpertParallelMoE
from minimoe.layer import MoELayer
from minimoe.lm.data import build_corpus, get_batch
from minimoe.lm.model import LMConfig, TinyLM
from minimoe.lm.train import TrainConfig, lm_loss, make_optimizer, router_losses
from minimoe.sorted import grouped_mm_moe

# small enough for a minute on two CPU processes: 2 blocks, D = 32, E = 4, K = 2
LM_CONFIG = dict(seq_len=32, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=32)


def _model(seed: int, lm_kwargs: dict) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(LMConfig(**lm_kwargs), experts_fn=grouped_mm_moe)


def _corpus():
    return build_corpus(max_bytes=200_000)


def _step_loss(model: TinyLM, x_BS, y_BS, tcfg: TrainConfig):
    logits_BSV, results = model(x_BS)
    lm = lm_loss(logits_BSV, y_BS)
    aux, z = router_losses(results, lm)
    return lm, lm + tcfg.aux_coef * aux + tcfg.z_coef * z, results


def train_lm_rank(
    rank: int,
    world_size: int,
    steps: int = 30,
    batch_per_rank: int = 8,
    seed: int = 0,
    lm_kwargs: dict | None = None,
) -> dict:
    """Train with expert parallelism over the W ranks; returns the loss curve and routing."""
    lm_kwargs = dict(LM_CONFIG if lm_kwargs is None else lm_kwargs)
    W = world_size
    model = _model(seed, lm_kwargs)
    for block in model.blocks:
        if isinstance(block.ffn, MoELayer):
            block.ffn = ExpertParallelMoE.from_layer(block.ffn)
    tcfg = TrainConfig(steps=steps, batch_size=batch_per_rank * W, grad_clip=0.0, seed=seed)
    optimizer = make_optimizer(model, tcfg)  # type: ignore[arg-type]
    corpus = _corpus()
    generator = torch.Generator().manual_seed(seed)
    S = model.cfg.seq_len
    mine = slice(rank * batch_per_rank, (rank + 1) * batch_per_rank)
    curve, experts_by_step = [], []
    model.train()
    for _ in range(steps):
        x_BS, y_BS = get_batch(corpus.train_U8, batch_per_rank * W, S, generator)
        lm, total, results = _step_loss(model, x_BS[mine], y_BS[mine], tcfg)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        sync_gradients(model)
        optimizer.step()
        mean_lm = lm.detach().clone()
        dist.all_reduce(mean_lm)
        curve.append(float(mean_lm) / W)
        experts_by_step.append([r.routing.expert_TK.reshape(-1).tolist() for r in results])
    return {"lm_loss": curve, "expert_ids": experts_by_step}


def train_lm_single(
    world_size: int,
    steps: int = 30,
    batch_per_rank: int = 8,
    seed: int = 0,
    lm_kwargs: dict | None = None,
) -> list[float]:
    """The same training in one process, on the whole batch (W ranks' rows); the loss curve."""
    lm_kwargs = dict(LM_CONFIG if lm_kwargs is None else lm_kwargs)
    W = world_size
    model = _model(seed, lm_kwargs)
    S = model.cfg.seq_len
    for block in model.blocks:
        if isinstance(block.ffn, MoELayer):
            cfg = replace(block.ffn.cfg, group_size=batch_per_rank * S, aux_loss_per_group=True)
            layer = MoELayer(cfg, experts_fn=grouped_mm_moe)
            layer.load_state_dict(block.ffn.state_dict())
            block.ffn = layer
    tcfg = TrainConfig(steps=steps, batch_size=batch_per_rank * W, grad_clip=0.0, seed=seed)
    optimizer = make_optimizer(model, tcfg)
    corpus = _corpus()
    generator = torch.Generator().manual_seed(seed)
    curve = []
    model.train()
    for _ in range(steps):
        x_BS, y_BS = get_batch(corpus.train_U8, batch_per_rank * W, S, generator)
        lm, total, _ = _step_loss(model, x_BS, y_BS, tcfg)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        curve.append(float(lm.detach()))
    return curve
