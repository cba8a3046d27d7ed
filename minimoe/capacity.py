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
        capacity_factor: cf > 0.
        min_capacity: lower bound on C.
        fixed_capacity: the C of the "switch" formula.
    """
    if formula not in CAPACITY_FORMULAS:
        raise ValueError(f"formula={formula!r} is not one of {CAPACITY_FORMULAS}")
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
    if n_tokens < 0 or n_experts < 1 or not 1 <= top_k <= n_experts:
        raise ValueError(f"bad sizes: T={n_tokens}, E={n_experts}, K={top_k}")
    T, E, K, cf = n_tokens, n_experts, top_k, capacity_factor
    if formula == "dropless":
        return None
    if formula == "switch":
        if fixed_capacity is None or fixed_capacity < 1:
            raise ValueError("the 'switch' formula needs fixed_capacity >= 1")
        return fixed_capacity
    if formula == "deepspeed":
        # DeepSpeed multiplies by a float32 tensor, so the product is rounded to float32 before
        # the ceil; in float64 it can land just above or below an integer (T=35, E=3, K=2, cf=0.3)
        c = int(torch.ceil((T / E) * torch.tensor(cf * K, dtype=torch.float32)))
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
    if policy not in DROP_POLICIES:
        raise ValueError(f"policy={policy!r} is not one of {DROP_POLICIES}")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0 or None, got {capacity}")
    if expert_TK.shape != gate_TK.shape or expert_TK.dim() != 2:
        raise ValueError("expert_TK and gate_TK must both have shape (T, K)")
    T, K = expert_TK.shape
    group_size = group_size or max(T, 1)
    if T % group_size:
        raise ValueError(f"T={T} tokens do not split into groups of {group_size}")
    order_N = _priority_order(gate_TK, policy, generator)
    # one bucket per (group, expert); rank each slot within its bucket in priority order
    group_TK = (torch.arange(T, device=expert_TK.device) // group_size).unsqueeze(1).expand(T, K)
    bucket_N = (group_TK * n_experts + expert_TK.long()).reshape(-1)[order_N]
    sorted_bucket_N, by_bucket_N = torch.sort(bucket_N, stable=True)
    n_buckets = (T // group_size) * n_experts
    counts_B = torch.bincount(sorted_bucket_N, minlength=n_buckets)
    starts_B = torch.cumsum(counts_B, 0) - counts_B
    rank_sorted_N = torch.arange(T * K, device=expert_TK.device) - starts_B[sorted_bucket_N]
    rank_N = torch.empty_like(rank_sorted_N)
    rank_N[order_N[by_bucket_N]] = rank_sorted_N
    rank_TK = rank_N.view(T, K)
    keep_TK = torch.ones_like(rank_TK, dtype=torch.bool) if capacity is None else rank_TK < capacity
    return keep_TK, torch.where(keep_TK, rank_TK, torch.full_like(rank_TK, -1))


def renormalize_survivors(gate_TK: torch.Tensor, keep_TK: torch.Tensor) -> torch.Tensor:
    """Rescale each token's kept gates so they sum to what all its gates summed to (DeepSpeed
    top2/topk renormalise after the capacity mask). Dropped slots get 0; a token that lost every
    slot keeps 0."""
    kept_TK = gate_TK * keep_TK
    kept_sum_T1 = kept_TK.sum(-1, keepdim=True)
    total_T1 = gate_TK.sum(-1, keepdim=True)
    return kept_TK * (total_T1 / kept_sum_T1.clamp_min(torch.finfo(gate_TK.dtype).eps))
