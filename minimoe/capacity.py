"""Expert capacity and drop policies: which routed slots survive when an expert overflows.

Capacity formulas (C = the most slots one expert takes per routing group):

| name        | C =                                              | source |
|-------------|--------------------------------------------------|--------|
| "dropless"  | no limit                                         | MegaBlocks (arXiv 2211.15841), Mixtral |
| "deepspeed" | max(ceil((T / E) * (cf * K)), min_capacity), in float32 | DeepSpeed `_capacity` in `moe/sharded_moe.py` |
| "megatron"  | max(ceil((T * K / E) * cf), min_capacity)        | Megatron-LM `get_capacity` |
| "tutel"     | max(K * int(cf * ceil(T / E)), min_capacity)     | Tutel `fast_dispatch` (cf > 0) |
| "switch"    | a fixed `expert_capacity` per group (sequence)   | HF SwitchTransformers |

"deepspeed" and "megatron" are the same formula evaluated in a different order and precision
(DeepSpeed rounds the product to float32); they can differ by one where the rounding lands next
to an integer. Tutel rounds down *before* the ×K.

Drop policies. Every policy is a priority order over the N = T*K slots; within each expert the
first C slots in that order are kept, the rest dropped:

| name             | priority                                             | used by |
|------------------|------------------------------------------------------|---------|
| "position"       | token order; all K choices compete                    | HF Switch, DeepSpeed topk 'position', Megatron 'position' |
| "k_major"        | every first choice before any second choice, then token order | DeepSpeed top2, Tutel, ST-MoE, nanoMoE |
| "probs"          | highest gate weight first                             | DeepSpeed topk 'probs', Megatron 'probs' |
| "random"         | a seeded random order                                 | DeepSpeed top1 random token selection |
| "batch_priority" | k-major, tokens ordered by their largest gate         | Tutel, V-MoE (arXiv 2106.05974 "BPR") |

"probs" ranks by the gate weights it is given. Megatron ranks by the final (renormalised)
weights; DeepSpeed topk by the raw softmax prob, `probs_TE.gather(1, expert_TK)`, and lays the
kept slots out in token order rather than in priority order.
"""

from __future__ import annotations

import math

import torch

from minimoe.config import CAPACITY_FORMULAS, DROP_POLICIES
from minimoe.validate import (
    check_choice,
    check_expert_ids,
    check_float_tensor,
    check_index_tensor,
    check_int,
    check_optional_int,
    check_real,
    check_shape,
)


def expert_capacity(
    n_tokens: int,
    n_experts: int,
    top_k: int,
    formula: str = "deepspeed",
    capacity_factor: float = 1.0,
    min_capacity: int = 0,
    fixed_capacity: int | None = None,
) -> int | None:
    """C, the number of slots per expert per routing group, or None for "dropless".

    Args:
        n_tokens: T, tokens in the routing group.
        n_experts, top_k: E, K.
        formula: one of "dropless", "deepspeed", "megatron", "tutel", "switch".
        capacity_factor: cf > 0, finite (a huge cf gives a huge C, which drops nothing).
        min_capacity: lower bound on C (an int >= 0).
        fixed_capacity: the C of the "switch" formula (an int >= 1).
    """
    check_choice("formula", formula, CAPACITY_FORMULAS)
    T = check_int("n_tokens", n_tokens, low=0)
    E = check_int("n_experts", n_experts, low=1)
    K = check_int("top_k", top_k, low=1, high=E)
    cf = check_real("capacity_factor", capacity_factor, low=0.0, low_open=True)
    min_capacity = check_int("min_capacity", min_capacity, low=0)
    check_optional_int("fixed_capacity", fixed_capacity, low=1)
    if formula == "dropless":
        return None
    if formula == "switch":
        if fixed_capacity is None:
            raise ValueError("the 'switch' formula needs fixed_capacity >= 1, got None")
        return int(fixed_capacity)
    if formula == "deepspeed":
        # DeepSpeed multiplies by a float32 tensor, so the product is rounded to float32 before
        # the ceil; in float64 it can land just above or below an integer (T=35, E=3, K=2, cf=0.3)
        c_f32 = torch.ceil((T / E) * torch.tensor(cf * K, dtype=torch.float32))
        if not torch.isfinite(c_f32):
            raise ValueError(
                f"capacity_factor={cf:g}: C overflows float32 in the 'deepspeed' formula; "
                "use capacity_formula='dropless' for no capacity limit"
            )
        c = int(c_f32)
    elif formula == "megatron":
        c = math.ceil((T * K / E) * cf)
    else:  # tutel
        c = K * int(cf * math.ceil(T / E))
    return max(c, min_capacity)


def _priority_order(
    gate_TK: torch.Tensor, policy: str, generator: torch.Generator | None
) -> torch.Tensor:
    """The N = T*K slot ids (t * K + k) from first to last priority."""
    T, K = gate_TK.shape
    device = gate_TK.device
    slot_TK = torch.arange(T * K, device=device).view(T, K)
    if policy == "position":
        return slot_TK.reshape(-1)
    if policy == "k_major":
        return slot_TK.t().reshape(-1)
    if policy == "probs":
        g_N = gate_TK.detach().reshape(-1).float()
        return torch.sort(-g_N, stable=True).indices
    if policy == "random":
        keys_N = torch.rand(T * K, generator=generator).to(device)
        return torch.argsort(keys_N)
    # batch_priority: tokens by their largest gate, then k-major
    token_T = torch.sort(-gate_TK.detach().float().amax(dim=1), stable=True).indices
    return slot_TK[token_T].t().reshape(-1)


def assign_slots(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    n_experts: int,
    capacity: int | None,
    policy: str = "position",
    *,
    group_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decide which slots an expert keeps, and where each kept slot sits in its expert's buffer.

    Args:
        expert_TK: chosen experts.
        gate_TK: their gate weights (used by "probs" and "batch_priority").
        n_experts: E.
        capacity: C per expert per group, or None (dropless: every slot is kept).
        policy: a drop policy (see the module docstring).
        group_size: route each run of `group_size` tokens on its own (Switch: one sequence);
            T must be a multiple of it. None: all T tokens are one group.
        generator: seeds the "random" policy.

    Returns:
        keep_TK: bool, True for the slots that survive.
        position_TK: int64, the slot's index in its expert's buffer of its group, in priority
            order (0 .. C-1 for kept slots, -1 for dropped ones).
    """
    check_choice("policy", policy, DROP_POLICIES)
    E = check_int("n_experts", n_experts, low=1)
    check_optional_int("capacity", capacity, low=0)
    check_index_tensor("expert_TK", expert_TK, dim=2)
    check_float_tensor("gate_TK", gate_TK)
    check_shape("gate_TK", gate_TK, tuple(expert_TK.shape), " (that of expert_TK)")
    check_optional_int("group_size", group_size, low=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    T = expert_TK.shape[0]
    if group_size is not None and T % group_size:
        raise ValueError(f"T={T} tokens do not split into groups of group_size={group_size}")
    check_expert_ids(expert_TK, E)
    return _assign_slots(expert_TK, gate_TK, E, capacity, policy, group_size, generator)


def _assign_slots(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    n_experts: int,
    capacity: int | None,
    policy: str,
    group_size: int | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`assign_slots` without the checks, for callers whose ids are in range by construction."""
    T, K = expert_TK.shape
    group_size = group_size or max(T, 1)
    order_N = _priority_order(gate_TK, policy, generator)
    # one bucket per (group, expert); rank each slot within its bucket in priority order
    group_TK = (torch.arange(T, device=expert_TK.device) // group_size).unsqueeze(1).expand(T, K)
    bucket_N = (group_TK * n_experts + expert_TK.long()).reshape(-1)[order_N]
    sorted_bucket_N, by_bucket_N = torch.sort(bucket_N, stable=True)
    n_buckets = (T // group_size) * n_experts
    bucket_counts = torch.bincount(sorted_bucket_N, minlength=n_buckets)
    bucket_starts = torch.cumsum(bucket_counts, 0) - bucket_counts
    rank_sorted_N = torch.arange(T * K, device=expert_TK.device) - bucket_starts[sorted_bucket_N]
    rank_N = torch.empty_like(rank_sorted_N)
    rank_N[order_N[by_bucket_N]] = rank_sorted_N
    rank_TK = rank_N.view(T, K)
    if capacity is None or capacity >= group_size * K:  # C at least the group's slots: no drops
        keep_TK = torch.ones_like(rank_TK, dtype=torch.bool)
    else:
        keep_TK = rank_TK < capacity
    return keep_TK, torch.where(keep_TK, rank_TK, torch.full_like(rank_TK, -1))


def random_second_expert(
    prob2_T: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """GShard's random routing: keep each token's second expert with probability min(1, 2 p2).

    GShard (Lepikhin et al., arXiv 2006.16668, Algorithm 1) dispatches the second expert only
    when 2 * g2 > U(0, 1): a token whose second gate is small rarely costs a second expert's
    capacity, and one with g2 = 0.5 always does. HF NLLB-MoE (`second_expert_policy="random"`,
    transformers 5.23) and fairseq draw the same comparison with p2 the raw softmax probability of
    the second expert; pass that here.

    Args:
        prob2_T: (T,) the second expert's probability per token.
        generator: the source of U(0, 1) (None: torch's global generator, as HF).

    Returns:
        keep2_T: bool (T,), True where the second expert is kept.
    """
    check_float_tensor("prob2_T", prob2_T, dim=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    u_T = torch.rand(prob2_T.shape, generator=generator, dtype=torch.float32)
    return (2 * prob2_T.detach().float()) > u_T.to(prob2_T.device)


def renormalize_survivors(gate_TK: torch.Tensor, keep_TK: torch.Tensor) -> torch.Tensor:
    """Rescale each token's kept gates so they sum to what all its gates summed to (DeepSpeed
    top2/topk renormalise after the capacity mask). Dropped slots get 0; a token that lost every
    slot keeps 0."""
    check_float_tensor("gate_TK", gate_TK, dim=2)
    if keep_TK.dtype != torch.bool:
        raise TypeError(f"keep_TK must be a bool tensor, got {keep_TK.dtype}")
    check_shape("keep_TK", keep_TK, tuple(gate_TK.shape), " (that of gate_TK)")
    kept_TK = gate_TK * keep_TK
    kept_sum_T1 = kept_TK.sum(-1, keepdim=True)
    total_T1 = gate_TK.sum(-1, keepdim=True)
    return kept_TK * (total_T1 / kept_sum_T1.clamp_min(torch.finfo(gate_TK.dtype).eps))
