"""One-hot einsum dispatch and combine with a capacity: the GShard / DeepSpeed way.

Every expert gets a buffer of C slots. Two (T, E, C) tensors say where each token goes:

    dispatch[t, e, c] = 1 if a kept slot of token t sits at position c of expert e's buffer
    combine[t, e, c]  = the gate weight of that slot (0 elsewhere)

and the whole experts step is three tensor contractions (GShard, Lepikhin et al.,
arXiv 2006.16668, Algorithm 2; DeepSpeed `MOELayer` in `moe/sharded_moe.py`):

    x_ECD = einsum("TEC,TD->ECD", dispatch, x)       # gather each expert's tokens
    y_ECD = FFN_e(x_ECD)                              # one batched matmul over (E, C, D)
    y_TD  = einsum("TEC,ECD->TD", combine, y_ECD)     # weight and scatter back

It needs no sort and no data-dependent shapes (C is fixed by the capacity), which suits TPUs and
static graphs. The price: the two (T, E, C) tensors, and the dispatch and combine contractions cost
2*T*E*C*D multiply-adds each, mostly multiplying by zero (see `minimoe.accounting`).

The slot positions come from `minimoe.assign_slots` when a capacity is given (its drop policy then
decides which slots survive); when only keep_TK is given, a kept slot's position is its rank, in
token order, among the kept slots of its expert. A dropped slot has no position and contributes 0.

Left out: the all-to-all between devices (chapter 09) and DeepSpeed's `einsum` fast paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum

from minimoe.capacity import assign_slots
from minimoe.experts import ExpertParams, activate, validate_experts_inputs
from minimoe.validate import (
    check_expert_ids,
    check_float_tensor,
    check_index_tensor,
    check_int,
    check_mask,
    check_optional_int,
    check_shape,
)


def _positions_in_token_order(
    expert_TK: torch.Tensor, keep_TK: torch.Tensor, n_experts: int
) -> torch.Tensor:
    """The rank of each kept slot among the kept slots of its expert, in token order; -1 if dropped."""
    kept_TKE = F.one_hot(expert_TK.long(), n_experts) * keep_TK.unsqueeze(-1)
    rank_NE = torch.cumsum(kept_TKE.reshape(-1, n_experts), 0) - 1  # flat slot order t*K + k
    rank_TK = rank_NE.view_as(kept_TKE).gather(2, expert_TK.long().unsqueeze(-1)).squeeze(-1)
    return torch.where(keep_TK, rank_TK, torch.full_like(rank_TK, -1))


def dispatch_combine_tensors(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    keep_TK: torch.Tensor | None,
    n_experts: int,
    capacity: int | None = None,
    *,
    position_TK: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the GShard dispatch and combine tensors.

    Args:
        expert_TK: chosen experts (int).
        gate_TK: their gate weights.
        keep_TK: bool, the slots that survive (None = all, or decided by `capacity`).
        n_experts: E.
        capacity: C, slots per expert. With keep_TK None, `assign_slots(..., "position")`
            applies it (drops by token order). None: C = the largest number of kept slots of
            any expert (nothing more is dropped).
        position_TK: each kept slot's position in its expert's buffer (e.g. `assign_slots`'
            second output); None: rank in token order among the kept slots of its expert.

    Returns:
        dispatch_TEC: bool, True where token t sits at position c of expert e.
        combine_TEC: gate_TK's dtype, the gate weight at those places, 0 elsewhere
            (differentiable with respect to gate_TK).
    """
    check_index_tensor("expert_TK", expert_TK, dim=2)
    check_float_tensor("gate_TK", gate_TK)
    check_shape("gate_TK", gate_TK, tuple(expert_TK.shape), " (that of expert_TK)")
    check_int("n_experts", n_experts, low=1)
    check_optional_int("capacity", capacity, low=0)
    if keep_TK is not None:
        check_mask("keep_TK", keep_TK, tuple(expert_TK.shape))
    if position_TK is not None:
        check_index_tensor("position_TK", position_TK)
        check_shape("position_TK", position_TK, tuple(expert_TK.shape), " (that of expert_TK)")
    check_expert_ids(expert_TK, n_experts)
    if keep_TK is None and capacity is not None:
        keep_TK, position_TK = assign_slots(expert_TK, gate_TK, n_experts, capacity, "position")
    if capacity is not None:  # a given capacity must hold every kept slot
        if keep_TK is None:
            keep_TK = torch.ones_like(expert_TK, dtype=torch.bool)
        if position_TK is None:
            position_TK = _positions_in_token_order(expert_TK, keep_TK, n_experts)
        kept_pos_R = position_TK[keep_TK]
        if kept_pos_R.numel() and (int(kept_pos_R.min()) < 0 or int(kept_pos_R.max()) >= capacity):
            raise ValueError(
                f"a kept slot has a position outside [0, C={capacity}): more than C kept slots"
            )
    return _dispatch_combine(expert_TK, gate_TK, keep_TK, n_experts, capacity, position_TK)


def _dispatch_combine(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    keep_TK: torch.Tensor | None,
    n_experts: int,
    capacity: int | None,
    position_TK: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`dispatch_combine_tensors` without the input checks (inputs validated by the caller)."""
    if keep_TK is None:
        keep_TK = torch.ones_like(expert_TK, dtype=torch.bool)
    if position_TK is None:
        position_TK = _positions_in_token_order(expert_TK, keep_TK, n_experts)
    if capacity is not None:
        C = capacity
    else:
        kept_pos_R = position_TK[keep_TK]
        C = int(kept_pos_R.max()) + 1 if kept_pos_R.numel() else 0
    onehot_TKE = F.one_hot(expert_TK.long(), n_experts).to(gate_TK.dtype)
    # a dropped slot gets the position C, one past the end, and is cut off by [..., :C]
    pos_TK = torch.where(keep_TK, position_TK, torch.full_like(position_TK, C))
    onehot_TKC = F.one_hot(pos_TK.long(), C + 1)[..., :C].to(gate_TK.dtype)
    # a slot (token, choice) lands at (expert, position): sum over the K choices of each token
    combine_TEC = einsum(gate_TK, onehot_TKE, onehot_TKC,
                         "token choice, token choice expert, token choice slot -> token expert slot")  # fmt: skip
    dispatch_TEC = einsum(onehot_TKE, onehot_TKC,
                          "token choice expert, token choice slot -> token expert slot").bool()  # fmt: skip
    return dispatch_TEC, combine_TEC


def einsum_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """The experts step as one-hot einsum dispatch, batched FFN and einsum combine.

    Same signature as `minimoe.reference_moe`. C is the largest number of kept slots of any
    expert, so nothing beyond keep_TK is dropped.

    Returns:
        y_TD in x's dtype.
    """
    validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK)
    dispatch_TEC, combine_TEC = _dispatch_combine(
        expert_TK, gate_TK.to(x_TD.dtype), keep_TK, params.n_experts, None, None
    )
    x_ECD = torch.einsum("tec,td->ecd", dispatch_TEC.to(x_TD.dtype), x_TD)
    h_ECF = torch.bmm(x_ECD, params.w1_EFD.transpose(1, 2))
    u_ECF = None
    if params.activation == "swiglu" and params.w3_EFD is not None:  # ExpertParams checks w3
        u_ECF = torch.bmm(x_ECD, params.w3_EFD.transpose(1, 2))
    h_ECF = activate(h_ECF, u_ECF, params.activation)
    y_ECD = torch.bmm(h_ECF, params.w2_EDF.transpose(1, 2))
    return torch.einsum("tec,ecd->td", combine_TEC, y_ECD)
