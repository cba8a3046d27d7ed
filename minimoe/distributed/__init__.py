"""Expert parallelism: experts sharded over processes, tokens sent to them by all-to-all.

One process cannot hold every expert of a large MoE (Mixtral 8x7B's 47B parameters do not fit
one consumer GPU), so each rank holds E / EP experts and the tokens travel: each rank routes its
own tokens, sends every slot to the rank that holds its expert (the dispatch all-to-all), runs
its local experts on what it received, and sends the results back (the combine all-to-all).
GShard (arXiv 2006.16668) introduced this layout; DeepSpeed-MoE, Megatron-LM and torchtitan
implement it (docs/conventions.md, "Expert parallelism", maps the names).

Local letters, on top of the shape letters of `minimoe`:

    W  ranks: the processes of a group (the world size, or the expert-parallel group's EP)
    J  experts one rank holds, J = E / EP
    M  slots one rank receives in the dispatch (the rows its local experts process)

The single-process planning functions (`minimoe.distributed.plan`) need no process group:

    rank_E = expert_ranks(n_experts=8, world_size=2)      # tensor([0, 0, 0, 0, 1, 1, 1, 1])
    send_W = send_counts(expert_TK, rank_E, 2)            # split sizes of all_to_all_single
    order_N, inverse_N = order_by_rank(expert_TK.reshape(-1), rank_E)

The layer and the processes (`ep`, `edp`, `launch`): `ExpertParallelMoE` is an `MoELayer` whose
experts live on the ranks of a process group; `launch(fn, W)` starts W processes (gloo on a
CPU, NCCL on GPUs) and returns what fn returned on each. `python -m minimoe ep` runs the
checks and the timing (`cli`); `verify`, `deepspeed_parity`, `comm` and `train_lm` are what it
runs on each rank.
"""

from minimoe.distributed.edp import (
    ParallelGroups,
    expert_data_parallel_groups,
    sync_gradients,
)
from minimoe.distributed.ep import AllToAll, ExpertParallelMoE, StepStats, all_to_all
from minimoe.distributed.launch import RankFailed, launch
from minimoe.distributed.plan import (
    a2a_bytes_model,
    best_placement_brute_force,
    cross_rank_slots,
    expert_load_by_rank,
    expert_ranks,
    greedy_placement,
    order_by_rank,
    send_counts,
    traffic_from_load,
    traffic_matrix,
)

__all__ = [
    "AllToAll",
    "ExpertParallelMoE",
    "ParallelGroups",
    "RankFailed",
    "StepStats",
    "all_to_all",
    "expert_data_parallel_groups",
    "launch",
    "sync_gradients",
    "a2a_bytes_model",
    "best_placement_brute_force",
    "cross_rank_slots",
    "expert_load_by_rank",
    "expert_ranks",
    "greedy_placement",
    "order_by_rank",
    "send_counts",
    "traffic_from_load",
    "traffic_matrix",
]
