"""Expert-choice routing: each expert picks its top-C tokens, instead of each token its top-K experts.

Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing" (arXiv 2202.09368), section 3.1:
with S = softmax(X W_g) the token-to-expert scores ([T, E] here, `probs_TE`), each expert e
takes the k = n c / e tokens of highest score in its column (n tokens, c the capacity factor,
e experts; `expert_choice_capacity`), with the gate G = TopK(S^T, k) and the token indices I.
Every expert is full by construction (perfect load balance, no balancing loss needed); the price
is that a token may be picked by several experts or by none (it then passes through the
residual alone), and that an expert's choice compares a token with every other token of the
routing group, later ones included: in a decoder this leaks the future (see
`minimoe.zoo.causality`).

Ties: each expert sorts the tokens by decreasing score with a stable sort, so among equal
scores the lower token index comes first. The shapes: E experts, C tokens per expert.
"""

from __future__ import annotations

import math

import torch

from minimoe.experts import ExpertParams, expert_ffn, zero_with_graph
from minimoe.validate import (
    check_float_tensor,
    check_index_tensor,
    check_int,
    check_real,
    check_shape,
)
from minimoe.zoo._validate import check_x_and_params

__all__ = ["expert_choice", "expert_choice_capacity", "expert_choice_moe"]


def expert_choice_capacity(n_tokens: int, n_experts: int, capacity_factor: float) -> int:
    """C = min(T, ceil(T * cf / E)): tokens each expert takes (arXiv 2202.09368, k = n c / e).

    The paper writes k = n c / e; the ceil keeps the total number of (token, expert) pairs at
    least T * cf, and C cannot exceed T (an expert takes a token once). 0 when T = 0.

    Args:
        n_tokens: T, tokens in the routing group (>= 0).
        n_experts: E (>= 1).
        capacity_factor: cf > 0, the average number of experts per token (the paper's c; c = 2
            matches the compute of top-2 token choice).
    """
    T = check_int("n_tokens", n_tokens, low=0)
    E = check_int("n_experts", n_experts, low=1)
    cf = check_real("capacity_factor", capacity_factor, low=0.0, low_open=True)
    return min(T, math.ceil(T * cf / E))


def expert_choice(probs_TE: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert takes the `capacity` tokens of highest probability in its column.

    Args:
        probs_TE: the token-to-expert scores, the softmax over experts of the router logits
            (the paper's S = softmax(X W_g)); float32 or float64.
        capacity: C, tokens per expert, 0 <= C <= T (`expert_choice_capacity`).

    Returns:
        (token_EC, gate_EC): token_EC[e, c] is the c-th token expert e chose (int64, decreasing
        score, ties to the lower token index); gate_EC[e, c] = probs_TE[token_EC[e, c], e],
        differentiable with respect to probs_TE.
    """
    check_float_tensor("probs_TE", probs_TE, dim=2)
    T, E = probs_TE.shape
    if E < 1:
        raise ValueError(
            f"probs_TE must have at least one expert column, got {tuple(probs_TE.shape)}"
        )
    C = check_int("capacity", capacity, low=0, high=T)
    probs_ET = probs_TE.t()
    # stable descending sort: equal scores keep their token order (lower index first)
    order_ET = torch.sort(probs_ET.detach(), dim=1, descending=True, stable=True).indices
    token_EC = order_ET[:, :C].contiguous()
    gate_EC = probs_ET.gather(1, token_EC)
    return token_EC, gate_EC


def expert_choice_moe(
    x_TD: torch.Tensor, token_EC: torch.Tensor, gate_EC: torch.Tensor, params: ExpertParams
) -> torch.Tensor:
    """y[t] = sum over (e, c) with token_EC[e, c] == t of gate_EC[e, c] * FFN_e(x[t]).

    A token no expert chose gets 0 (the residual carries it); a token several experts chose gets
    the weighted sum of their outputs. One dense matmul per expert over its C chosen tokens.

    Args:
        x_TD: tokens.
        token_EC: the tokens each expert chose (`expert_choice`), ids in [0, T).
        gate_EC: their gate weights.
        params: the E experts' weights (`minimoe.ExpertParams`).

    Returns:
        y_TD in x's dtype, a function of every input (zero gradients where nothing was chosen).
    """
    check_x_and_params(x_TD, params)
    E = params.n_experts
    check_index_tensor("token_EC", token_EC, dim=2)
    if token_EC.shape[0] != E:
        raise ValueError(
            f"token_EC must have shape (E={E}, C), one row per expert, got {tuple(token_EC.shape)}"
        )
    check_float_tensor("gate_EC", gate_EC)
    check_shape("gate_EC", gate_EC, tuple(token_EC.shape), " (that of token_EC)")
    T = x_TD.shape[0]
    if token_EC.numel():
        lo, hi = (int(v) for v in torch.aminmax(token_EC))
        if lo < 0 or hi >= T:
            raise ValueError(
                f"token_EC: token ids must be in [0, T={T}), got ids from {lo} to {hi}"
            )
    y_TD = zero_with_graph(x_TD, gate_EC, params)
    for e in range(E):
        token_C = token_EC[e].long()
        if token_C.numel() == 0:
            continue
        h_CD = expert_ffn(x_TD[token_C], params, e)
        y_TD.index_add_(0, token_C, h_CD * gate_EC[e, :, None].to(h_CD.dtype))
    return y_TD
