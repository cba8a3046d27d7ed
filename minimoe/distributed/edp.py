"""Expert-data parallelism: EP < W, each expert replicated W / EP times, as DeepSpeed does.

With W ranks and expert-parallel size EP, the ranks form W / EP expert-parallel groups of EP
consecutive ranks (each group holds every expert once, J = E / EP per rank) and EP
expert-data-parallel groups: the ranks that hold the same experts, one per EP group. With
W = 4, EP = 2:

    expert-parallel groups       [0, 1], [2, 3]     (tokens travel within these)
    expert-data-parallel groups  [0, 2], [1, 3]     (expert gradients are all-reduced in these)

DeepSpeed 0.19.8 builds the same groups (`deepspeed/utils/groups.py`,
`_create_expert_and_data_parallel`: "expert_parallel_group = [0,1], [2,3]; expert_data_parallel
_group = [0,2], [1,3]" for world 4, ep 2); Megatron-LM's expert-data-parallel group is the same
idea (`parallel_state.get_expert_data_parallel_group`).

Gradients (`sync_gradients`): every parameter that is not an expert's (router, attention,
embeddings) is replicated on all W ranks and is all-reduced over all of them; an expert's
gradient already sums the contributions of every token of its EP group (the all-to-all brought
them), so it is all-reduced over its expert-data-parallel group only. Both are divided by W, so
that each rank's loss being the mean over its own tokens, the result is the gradient of the
mean over all ranks' tokens: what one process computes on the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from minimoe.validate import check_int


@dataclass
class ParallelGroups:
    """The process groups of expert-data parallelism, as seen from one rank.

    Attributes:
        ep_size: EP, ranks per expert-parallel group.
        ep_group: this rank's expert-parallel group (all-to-all of tokens).
        edp_group: this rank's expert-data-parallel group (all-reduce of expert gradients).
        ep_rank: this rank's index within its expert-parallel group.
        edp_rank: its index within its expert-data-parallel group (which replica it is).
        world_size: W.
    """

    ep_size: int
    ep_group: dist.ProcessGroup
    edp_group: dist.ProcessGroup
    ep_rank: int
    edp_rank: int
    world_size: int


def expert_data_parallel_groups(ep_size: int) -> ParallelGroups:
    """Make the groups on every rank (a collective: all ranks call it, in the same order).

    Raises:
        ValueError: W is not a multiple of ep_size.
    """
    W, rank = dist.get_world_size(), dist.get_rank()
    EP = check_int("ep_size", ep_size, low=1, high=W)
    if W % EP:
        raise ValueError(f"world size W={W} is not a multiple of ep_size={EP}")
    ep_groups = [dist.new_group(list(range(i * EP, (i + 1) * EP))) for i in range(W // EP)]
    edp_groups = [dist.new_group(list(range(j, W, EP))) for j in range(EP)]
    return ParallelGroups(
        ep_size=EP,
        ep_group=ep_groups[rank // EP],
        edp_group=edp_groups[rank % EP],
        ep_rank=rank % EP,
        edp_rank=rank // EP,
        world_size=W,
    )


def is_expert_param(p: nn.Parameter) -> bool:
    """Whether p is a sharded expert weight (`ExpertParallelMoE` marks them)."""
    return bool(getattr(p, "expert_parallel", False))


@torch.no_grad()
def sync_gradients(module: nn.Module, groups: ParallelGroups | None = None) -> None:
    """All-reduce the gradients of `module` after backward, then divide them by W.

    Args:
        module: the model on this rank (parameters without a gradient are skipped; every rank
            must have the same ones).
        groups: from `expert_data_parallel_groups`; None means EP = W (expert gradients are
            complete already and are only divided by W).
    """
    W = dist.get_world_size()
    for p in module.parameters():
        if p.grad is None:
            continue
        if is_expert_param(p):
            if groups is not None and dist.get_world_size(groups.edp_group) > 1:
                dist.all_reduce(p.grad, group=groups.edp_group)
        else:
            dist.all_reduce(p.grad)
        p.grad.div_(W)
