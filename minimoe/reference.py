"""The reference oracle: the specification of the experts step, as a per-token, per-k loop in float64.

It is slow on purpose and obviously right; every other implementation is tested against it,
outputs and gradients. Inputs are promoted to float64 inside and the result is cast back to
x's dtype, so gradients flow to x, the gates and every weight (zero gradients when no slot is
kept, or T = 0: the output is always part of the autograd graph).
"""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams, ffn, validate_experts_inputs, zero_with_graph


def reference_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[t] = sum_k keep[t,k] * gate[t,k] * FFN_{expert[t,k]}(x[t]), one token and one k at a time.

    Args:
        x_TD: tokens.
        expert_TK: chosen expert of each slot (int).
        gate_TK: gate weight of each slot.
        params: the experts' weights (`ExpertParams`).
        keep_TK: which slots survived the capacity limit (None = all).

    Returns:
        y_TD in x's dtype.
    """
    validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK)
    T, D = x_TD.shape
    p = params
    w1, w2 = p.w1_EFD.double(), p.w2_EDF.double()
    w3 = None if p.w3_EFD is None else p.w3_EFD.double()
    x64, g64 = x_TD.double(), gate_TK.double()
    rows = []
    for t in range(T):
        y_D = x64.new_zeros(D)
        for k in range(expert_TK.shape[1]):
            if keep_TK is not None and not bool(keep_TK[t, k]):
                continue  # a dropped slot contributes nothing
            e = int(expert_TK[t, k])
            h_1D = ffn(x64[t : t + 1], w1[e], w2[e], None if w3 is None else w3[e], p.activation)
            y_D = y_D + g64[t, k] * h_1D[0]
        rows.append(y_D)
    y_TD = torch.stack(rows).to(x_TD.dtype) if rows else x_TD.new_zeros(0, D)
    # T = 0, or every slot dropped: still a function of every input (zero gradients), as the
    # vectorised implementations are
    return y_TD + zero_with_graph(x_TD, gate_TK, params)
