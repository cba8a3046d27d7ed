"""minimoe's expert-parallel layer against DeepSpeed-MoE's own, on the same processes.

DeepSpeed 0.19.8's `deepspeed.moe.layer.MoE(hidden_size, expert, num_experts, ep_size, k)` runs on
a CPU: the accelerator is chosen by the environment (`DS_ACCELERATOR=cpu`, read when deepspeed is
first imported) and `deepspeed.init_distributed(dist_backend="gloo")` adopts the process group
that `launch` made. Its process groups are made by `MoE.set_deepspeed_parallelism()`, which
`deepspeed.initialize` calls for a model; here the layer is used alone, so we call it.

`deepspeed_rank` builds both layers from one seeded `MoELayer` (the same router and expert weights
copied into DeepSpeed's gate `wg` and its local experts), runs this rank's tokens through both in
training mode and compares: the outputs, `l_aux`, the expert counts (`exp_counts`), and the
gradients of the gate and of the local experts.

The settings that make DeepSpeed's routing deterministic and dropless, and minimoe's config that
matches them:

| DeepSpeed                                      | minimoe                                          |
|------------------------------------------------|--------------------------------------------------|
| k=1 (`top1gating`), use_rts=False              | gating "switch", K = 1                           |
| k=2 (`top2gating`), top2_2nd_expert_sampling=False | gating "mixtral", K = 2                      |
| drop_tokens=False (C = the largest count over the EP group) | dispatch "dropless"                 |
| noisy_gate_policy=None                         | noise "none"                                     |
| l_aux: the Switch loss on first choices only   | `load_balancing_loss(..., first_choice_only=True)` |

DeepSpeed's dispatch is fixed-capacity (einsum into (E, C, D) buffers, then `_AllToAll` with
equal splits); with drop_tokens=False it first all-reduces the largest expert count, so nothing
is dropped and the outputs equal minimoe's dropless layer, whose all-to-all has uneven splits.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import MoEConfig
from minimoe.distributed.ep import ExpertParallelMoE
from minimoe.layer import MoELayer
from minimoe.losses import load_balancing_loss


class SwiGLUExpert(nn.Module):
    """One SwiGLU expert as an `nn.Module`, the `expert` DeepSpeed's MoE copies J times."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def init_deepspeed_cpu():
    """Import DeepSpeed for a CPU and let it adopt the gloo process group; returns the module.

    `DS_ACCELERATOR=cpu` must be set before deepspeed is imported. `init_distributed` then
    wraps torch.distributed in its `TorchBackend`, whose constructor JIT-compiles a
    shared-memory all-reduce for CPUs (`ShareMemCommBuilder`, a C++ extension: minutes, a
    compiler, a lock in ~/.cache/torch_extensions that a killed build leaves behind). The MoE
    layer does not use it (it calls all-to-all and one all-reduce of a count), so we mark the
    op unavailable, which makes `build_shm_op` return None, instead of letting DeepSpeed probe
    every op (that probe runs the compiler too).
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    if "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = defaultdict(bool)  # every op: not compatible
    deepspeed.init_distributed(dist_backend="gloo")
    return deepspeed


def deepspeed_rank(
    rank: int,
    world_size: int,
    top_k: int = 2,
    tokens: int = 16,
    d_model: int = 16,
    d_ff: int = 32,
    experts_per_rank: int = 2,
    seed: int = 0,
) -> dict:
    """Run DeepSpeed's MoE and minimoe's on this rank's tokens; return their differences."""
    deepspeed = init_deepspeed_cpu()
    from deepspeed.moe.layer import MoE

    W, E = world_size, experts_per_rank * world_size
    cfg = MoEConfig(
        d_model=d_model,
        d_ff=d_ff,
        n_experts=E,
        top_k=top_k,
        gating="switch" if top_k == 1 else "mixtral",
        capacity_formula="dropless",
    )
    torch.manual_seed(seed)
    single = MoELayer(cfg)
    x_TD = torch.randn(W * tokens, d_model)[rank * tokens : (rank + 1) * tokens]
    g_TD = torch.randn(W * tokens, d_model)[rank * tokens : (rank + 1) * tokens]
    ours = ExpertParallelMoE.from_layer(single)

    ds = MoE(
        d_model,
        SwiGLUExpert(d_model, d_ff),
        num_experts=E,
        ep_size=W,
        k=top_k,
        min_capacity=0,
        noisy_gate_policy=None,
        drop_tokens=False,
        use_rts=False,
        top2_2nd_expert_sampling=False,
    )
    ds.set_deepspeed_parallelism()
    with torch.no_grad():
        ds.deepspeed_moe.gate.wg.weight.copy_(single.router.w_ED)
        params = ours.experts.params
        for j, expert in enumerate(ds.deepspeed_moe.experts.deepspeed_experts):
            expert.w1.weight.copy_(params.w1_EFD[j])
            expert.w3.weight.copy_(params.w3_EFD[j])
            expert.w2.weight.copy_(params.w2_EDF[j])
    ds.train()
    ours.train()

    x_ds = x_TD.clone().requires_grad_(True)
    y_ds, l_aux, exp_counts = ds(x_ds)
    (y_ds * g_TD).sum().backward()
    x_ours = x_TD.clone().requires_grad_(True)
    y_ours, result = ours(x_ours)
    (y_ours * g_TD).sum().backward()
    aux = load_balancing_loss(
        result.routing.probs_TE, result.routing.expert_TK, first_choice_only=True
    )
    counts = torch.bincount(result.routing.expert_TK.reshape(-1), minlength=E)
    grads = {"grad_x": (x_ds.grad, x_ours.grad), "grad_gate": (
        ds.deepspeed_moe.gate.wg.weight.grad, ours.router.w_ED.grad)}  # fmt: skip
    for j, expert in enumerate(ds.deepspeed_moe.experts.deepspeed_experts):
        for name, ours_w in (("w1", ours.experts.w1_EFD), ("w2", ours.experts.w2_EDF),
                             ("w3", ours.experts.w3_EFD)):  # fmt: skip
            assert ours_w is not None and ours_w.grad is not None
            grads[f"grad_{name}[{j}]"] = (getattr(expert, name).weight.grad, ours_w.grad[j])

    def diff(a, b) -> float:
        return float((a.detach().float() - b.detach().float()).abs().max())

    return {
        "top_k": top_k,
        "output": diff(y_ds.reshape(y_ours.shape), y_ours),
        "output_abs_max": float(y_ours.detach().abs().max()),  # not trivially zero
        "l_aux": diff(l_aux, aux),
        "exp_counts_equal": bool(torch.equal(exp_counts.long().cpu(), counts)),
        "grad": max(diff(a, b) for a, b in grads.values()),
        "deepspeed_version": deepspeed.__version__,
    }


def deepspeed_both_k(rank: int, world_size: int) -> list[dict]:
    """`deepspeed_rank` for k = 1 and k = 2, in one launch."""
    return [deepspeed_rank(rank, world_size, top_k=k) for k in (1, 2)]
