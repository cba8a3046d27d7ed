"""Planning expert parallelism in one process: who owns which expert, who sends what to whom.

Everything here is a pure function of routing decisions (expert ids) and a placement (rank_E);
no process group is needed, so the same functions serve the distributed layer, the tests and
the lesson's exercises.

Local letters (see the package docstring): W, ranks (the world size, or the expert-parallel
group's size where that is smaller); J, experts one rank holds (J = E / W).

A placement is `rank_E`: int64, the rank that holds each expert. The contiguous placement
(`expert_ranks`) is DeepSpeed's and Megatron-LM's: with E = 8 and W = 2, rank 0 holds experts
0..3 and rank 1 holds 4..7 (DeepSpeed 0.19.8 `deepspeed/moe/experts.py`/`layer.py`,
`num_local_experts = num_experts // ep_size`; Megatron-LM `core/transformer/moe/moe_layer.py`,
`local_expert_indices_offset = ep_rank * num_local_experts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations

import torch

from minimoe.validate import check_index_tensor, check_int, check_real


def expert_ranks(n_experts: int, world_size: int) -> torch.Tensor:
    """The contiguous placement: expert e lives on rank e // (E // W).

    Args:
        n_experts: E.
        world_size: W, the ranks the experts are sharded over.

    Returns:
        rank_E: int64 (E,).

    Raises:
        ValueError: when E is not a multiple of W (every rank must hold the same number of
            experts, as DeepSpeed and Megatron-LM require).
    """
    E = check_int("n_experts", n_experts, low=1)
    W = check_int("world_size", world_size, low=1)
    if E % W:
        raise ValueError(
            f"n_experts={E} is not a multiple of world_size={W}: each rank must hold the same "
            f"number of experts (E // W); pick W among the divisors of {E}"
        )
    return torch.arange(E) // (E // W)


def _check_placement(rank_E: torch.Tensor, world_size: int | None = None) -> torch.Tensor:
    check_index_tensor("rank_E", rank_E, dim=1)
    if rank_E.numel() == 0:
        raise ValueError("rank_E must place at least one expert, got an empty tensor")
    low = int(rank_E.min())
    if low < 0:
        raise ValueError(f"rank_E holds a negative rank ({low})")
    if world_size is not None and int(rank_E.max()) >= world_size:
        raise ValueError(
            f"rank_E places an expert on rank {int(rank_E.max())}, but world_size={world_size}"
        )
    return rank_E.long()


def _check_expert_ids(name: str, expert_N: torch.Tensor, n_experts: int) -> torch.Tensor:
    check_index_tensor(name, expert_N)
    expert_N = expert_N.reshape(-1).long()
    if expert_N.numel() and (int(expert_N.min()) < 0 or int(expert_N.max()) >= n_experts):
        raise ValueError(
            f"{name} holds expert ids in [{int(expert_N.min())}, {int(expert_N.max())}], "
            f"outside [0, {n_experts}) (rank_E places {n_experts} experts)"
        )
    return expert_N


def send_counts(expert_N: torch.Tensor, rank_E: torch.Tensor, world_size: int) -> torch.Tensor:
    """How many of this rank's slots go to each destination rank.

    These are the input split sizes of `torch.distributed.all_to_all_single` in the dispatch
    (after `order_by_rank` has grouped the slots by destination).

    Args:
        expert_N: int, the expert of each slot (any shape; flattened, e.g. expert_TK).
        rank_E: int64 (E,), the placement.
        world_size: W.

    Returns:
        send_W: int64 (W,), summing to the number of slots.
    """
    W = check_int("world_size", world_size, low=1)
    rank_E = _check_placement(rank_E, W)
    expert_N = _check_expert_ids("expert_N", expert_N, rank_E.numel())
    return torch.bincount(rank_E.to(expert_N.device)[expert_N], minlength=W)


def order_by_rank(
    expert_N: torch.Tensor, rank_E: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A stable sort of the slots by (destination rank, expert id).

    The sort key of slot n is rank_E[e] * E + e with e = expert_N[n]; equal keys keep their
    order (token order within an expert). Grouping by rank makes each destination's slots one
    contiguous chunk (what all_to_all_single sends); grouping by expert inside it gives the
    receiving rank runs it can feed to a grouped matmul with few reorderings.

    Args:
        expert_N: int (N,), the expert of each slot (flattened expert_TK: slot n = t * K + k).
        rank_E: int64 (E,), the placement.

    Returns:
        order_N: int64 (N,), order_N[i] is the slot placed i-th: x_sorted = x[order_N].
        inverse_N: int64 (N,), undoes it: x_sorted[inverse_N] == x.
    """
    rank_E = _check_placement(rank_E)
    E = rank_E.numel()
    expert_N = _check_expert_ids("expert_N", expert_N, E)
    key_N = rank_E.to(expert_N.device)[expert_N] * E + expert_N
    order_N = torch.sort(key_N, stable=True).indices
    inverse_N = torch.empty_like(order_N)
    inverse_N[order_N] = torch.arange(order_N.numel(), device=order_N.device)
    return order_N, inverse_N


def expert_load_by_rank(expert_per_rank: Sequence[torch.Tensor], n_experts: int) -> torch.Tensor:
    """Slots from each source rank to each expert.

    Args:
        expert_per_rank: W tensors, the expert ids of each rank's slots (expert_N or expert_TK
            of rank w; the ranks may hold different numbers of tokens).
        n_experts: E.

    Returns:
        count_WE: int64 (W, E), count_WE[w, e] = slots of rank w routed to expert e.
    """
    E = check_int("n_experts", n_experts, low=1)
    if isinstance(expert_per_rank, torch.Tensor) or len(expert_per_rank) == 0:
        raise TypeError(
            "expert_per_rank must be a non-empty list of per-rank expert-id tensors, got "
            f"{type(expert_per_rank).__name__}"
        )
    rows = [
        torch.bincount(_check_expert_ids(f"expert_per_rank[{w}]", ids, E).cpu(), minlength=E)
        for w, ids in enumerate(expert_per_rank)
    ]
    return torch.stack(rows)


def traffic_from_load(count_WE: torch.Tensor, rank_E: torch.Tensor) -> torch.Tensor:
    """The rank-to-rank traffic of a per-expert load: count_WW[src, dst] = sum of count_WE[src, e]
    over the experts e that rank dst holds."""
    check_index_tensor("count_WE", count_WE, dim=2)
    rank_E = _check_placement(rank_E)
    W, E = count_WE.shape
    if rank_E.numel() != E:
        raise ValueError(f"count_WE has {E} expert columns but rank_E places {rank_E.numel()}")
    if int(rank_E.max()) >= W:
        raise ValueError(f"rank_E places an expert on rank {int(rank_E.max())}, but W={W} rows")
    onehot_EW = torch.nn.functional.one_hot(rank_E.cpu(), W).long()
    return count_WE.long().cpu() @ onehot_EW


def traffic_matrix(
    expert_per_rank: Sequence[torch.Tensor], rank_E: torch.Tensor, world_size: int
) -> torch.Tensor:
    """Slots sent from each source rank to each destination rank in one dispatch.

    Args:
        expert_per_rank: W tensors, the expert ids of rank w's slots (as `expert_load_by_rank`);
            a (W, N) tensor is accepted too (one row per rank, equal slot counts).
        rank_E: int64 (E,), the placement.
        world_size: W, the number of source ranks (len(expert_per_rank)).

    Returns:
        count_WW: int64 (W, W), count_WW[src, dst]; row src is `send_counts` of rank src, and the
        diagonal is the traffic that stays on its rank. The combine sends the transpose back.
    """
    W = check_int("world_size", world_size, low=1)
    rank_E = _check_placement(rank_E, W)
    if isinstance(expert_per_rank, torch.Tensor):
        check_index_tensor("expert_per_rank", expert_per_rank, dim=2)
        expert_per_rank = list(expert_per_rank)
    if len(expert_per_rank) != W:
        raise ValueError(f"expert_per_rank has {len(expert_per_rank)} ranks' slots, world_size={W}")
    return traffic_from_load(expert_load_by_rank(expert_per_rank, rank_E.numel()), rank_E)


def cross_rank_slots(count_WE: torch.Tensor, rank_E: torch.Tensor) -> int:
    """Slots that leave their rank under a placement: all slots minus the ones whose expert
    lives on their own rank (the off-diagonal of the traffic matrix)."""
    count_WW = traffic_from_load(count_WE, rank_E)
    return int(count_WW.sum() - count_WW.trace())


def greedy_placement(count_WE: torch.Tensor, experts_per_rank: int) -> torch.Tensor:
    """An expert-to-rank placement that co-locates experts with the tokens that choose them.

    A placement keeps count_WE[rank_E[e], e] slots of expert e on their own rank; the rest
    cross. The greedy rule:

    1. The gain of putting expert e on rank w is how much more rank w sends to e than the
       average rank does: gain[w, e] = count_WE[w, e] - mean over ranks of count_WE[:, e].
    2. List every (expert e, rank w) pair by gain, largest first (ties: lower expert id, then
       lower rank).
    3. Walk the list: put expert e on rank w when e is not placed yet and rank w holds fewer
       than `experts_per_rank` experts.

    The gain, not the raw count, decides the order: an expert every rank uses equally (gain 0
    everywhere) saves the same wherever it goes, so it should not take a rank's place from an
    expert that rank uses more than the others. Since every expert is placed once, the total
    of the means is the same for every placement, so maximising the gains kept is minimising
    the crossing slots. With two ranks the rule is optimal (it puts on rank 0 the J experts with
    the largest count_WE[0, e] - count_WE[1, e]); with more ranks it is a heuristic (the optimum
    is an assignment problem). tests/distributed/test_plan.py checks it against the contiguous
    placement on skewed traces and against brute force on small cases.

    Args:
        count_WE: int (W, E), slots from rank w to expert e (`expert_load_by_rank`).
        experts_per_rank: J, experts each rank holds; W * J must equal E.

    Returns:
        rank_E: int64 (E,), each rank holding exactly J experts.
    """
    check_index_tensor("count_WE", count_WE, dim=2)
    W, E = count_WE.shape
    J = check_int("experts_per_rank", experts_per_rank, low=1)
    if W * J != E:
        raise ValueError(
            f"experts_per_rank={J} times W={W} ranks is {W * J}, not the E={E} experts of count_WE"
        )
    count_WE = count_WE.cpu().double()
    gain_EW = (count_WE - count_WE.mean(0, keepdim=True)).t()  # row e: gains of expert e
    # pair (e, w) has flat index e * W + w: sorting by (-gain, index) gives the tie order
    gains = gain_EW.reshape(-1).tolist()
    order = sorted(range(E * W), key=lambda i: (-gains[i], i))
    rank_E = torch.full((E,), -1, dtype=torch.long)
    held_W = [0] * W
    for i in order:
        e, w = divmod(i, W)
        if rank_E[e] < 0 and held_W[w] < J:
            rank_E[e] = w
            held_W[w] += 1
    return rank_E


def best_placement_brute_force(count_WE: torch.Tensor, experts_per_rank: int) -> torch.Tensor:
    """The placement with the fewest cross-rank slots, by trying every one (small E only: E!).

    For tests and for checking `greedy_placement`; refuses E > 8.
    """
    check_index_tensor("count_WE", count_WE, dim=2)
    W, E = count_WE.shape
    J = check_int("experts_per_rank", experts_per_rank, low=1)
    if W * J != E:
        raise ValueError(f"experts_per_rank={J} times W={W} is not E={E}")
    if E > 8:
        raise ValueError(f"brute force tries E! placements; E={E} > 8 is too many")
    base_E = torch.arange(E) // J
    best, best_cost = base_E, cross_rank_slots(count_WE, base_E)
    for perm in set(permutations(base_E.tolist())):
        rank_E = torch.tensor(perm)
        cost = cross_rank_slots(count_WE, rank_E)
        if cost < best_cost:
            best, best_cost = rank_E, cost
    return best


def a2a_bytes_model(
    n_tokens: int, top_k: int, d_model: int, bytes_per_element: int, ep_size: int
) -> float:
    """Bytes one rank sends per MoE layer per forward step, uniform routing: 2·T·K·D·b·(EP−1)/EP.

    T tokens on the rank make T·K slots of D elements of b bytes; with routing uniform over the
    EP ranks, a fraction (EP−1)/EP of them leaves the rank in the dispatch, and the same number
    of rows comes back in the combine (the factor 2). The backward pass sends as much again.
    This is the usual estimate (e.g. DeepSpeed-MoE, arXiv 2201.05596, section 5; Tutel,
    arXiv 2206.03382, section 2); the rank's own share (1/EP) is a local copy.

    Args:
        n_tokens: T, tokens on one rank.
        top_k: K.
        d_model: D.
        bytes_per_element: b (4 for float32, 2 for bf16).
        ep_size: EP, ranks the experts are sharded over.

    Returns:
        bytes (a float: (EP−1)/EP need not be whole).
    """
    T = check_int("n_tokens", n_tokens, low=0)
    K = check_int("top_k", top_k, low=1)
    D = check_int("d_model", d_model, low=1)
    b = check_real("bytes_per_element", bytes_per_element, low=0.0, low_open=True)
    EP = check_int("ep_size", ep_size, low=1)
    return 2.0 * T * K * D * b * (EP - 1) / EP
