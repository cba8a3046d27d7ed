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
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import ExpertParams, Experts, expert_ffn, zero_with_graph
from minimoe.losses import z_loss
from minimoe.router import Router
from minimoe.validate import (
    check_choice,
    check_float_tensor,
    check_index_tensor,
    check_int,
    check_real,
    check_shape,
)
from minimoe.zoo._validate import check_x_and_params
from minimoe.zoo.result import ZooResult, stats_from_counts

__all__ = [
    "ExpertChoiceLayer",
    "expert_choice",
    "expert_choice_capacity",
    "expert_choice_groups",
    "expert_choice_moe",
]


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


def expert_choice_groups(
    probs_GTE: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`expert_choice` in each of G routing groups at once, with group-local token ids.

    Args:
        probs_GTE: scores of G groups of T tokens each.
        capacity: C per expert per group.

    Returns:
        (token_GEC, gate_GEC): as `expert_choice` on each group (same order and ties).
    """
    probs_GET = probs_GTE.transpose(1, 2)
    order_GET = torch.sort(probs_GET.detach(), dim=2, descending=True, stable=True).indices
    token_GEC = order_GET[:, :, :capacity].contiguous()
    return token_GEC, probs_GET.gather(2, token_GEC)


class ExpertChoiceLayer(nn.Module):
    """An MoE layer with expert-choice routing (arXiv 2202.09368), returning (y, ZooResult).

    Args:
        cfg: the `MoEConfig` (D, F, E, activation; K sets the default capacity factor).
        capacity_factor: the paper's c, experts per token on average (default K: the compute
            of top-K token choice, as the paper's EC-CF2 matches top-2).
        group: which tokens compete: "batch" (every token of the call, the paper's choice;
            not causal in a decoder) or "position" (the B tokens at the same position of the B
            sequences, the remedy the paper's limitations section names: route the tokens of a
            sequence in separate groups; causal along the sequence, but a token's routing then
            depends on the other sequences of the batch, so generation needs a batch).

    Statistics: routed_E = load_E = tokens each expert took (equal by construction); drop_rate
    = the share of tokens no expert took (they pass through the residual only). No balancing
    loss (balance is built in); z_loss of the router logits.
    """

    uses_context = False

    def __init__(
        self, cfg: MoEConfig, *, capacity_factor: float | None = None, group: str = "batch"
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.capacity_factor = check_real(
            "capacity_factor",
            float(cfg.top_k) if capacity_factor is None else capacity_factor,
            low=0.0,
            low_open=True,
        )
        self.group = check_choice("group", group, ("batch", "position"))
        self.router = Router(cfg.d_model, cfg.n_experts)
        self.experts = Experts(cfg.n_experts, cfg.d_model, cfg.d_ff, cfg.activation)

    def inactive_params(self) -> int:
        """Expert weights a token does not use, on average: (E - cf) experts' worth."""
        per_expert = sum(p.numel() for p in self.experts.parameters()) // self.cfg.n_experts
        return round(
            (self.cfg.n_experts - min(self.capacity_factor, self.cfg.n_experts)) * per_expert
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        E = cfg.n_experts
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        x_TD = x.reshape(-1, cfg.d_model)
        T = x_TD.shape[0]
        logits_TE, _ = self.router(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        if self.group == "batch":
            C = expert_choice_capacity(T, E, self.capacity_factor)
            token_EC, gate_EC = expert_choice(probs_TE, C)
        else:
            if x.dim() != 3:
                raise ValueError(
                    f"group='position' needs x of shape (B, S, D), got {tuple(x.shape)}"
                )
            B, S, _ = x.shape
            C = expert_choice_capacity(B, E, self.capacity_factor)
            probs_SBE = probs_TE.view(B, S, E).transpose(0, 1)
            token_SEC, gate_SEC = expert_choice_groups(probs_SBE, C)
            # token b of position group s is token b * S + s of the flattened batch
            pos_S11 = torch.arange(S, device=x.device).view(S, 1, 1)
            token_EC = (token_SEC * S + pos_S11).permute(1, 0, 2).reshape(E, S * C)
            gate_EC = gate_SEC.permute(1, 0, 2).reshape(E, S * C)
        y_TD = expert_choice_moe(x_TD, token_EC, gate_EC.to(x_TD.dtype), self.experts.params)

        def stats():
            count_E = torch.full((E,), token_EC.shape[1], dtype=torch.long)
            chosen_T = torch.bincount(token_EC.reshape(-1).cpu(), minlength=T)
            dropped = float((chosen_T == 0).double().mean()) if T else 0.0
            return stats_from_counts(count_E, count_E, dropped, probs_TE)

        result = ZooResult(
            aux_loss=logits_TE.new_zeros(()),
            z_loss=z_loss(logits_TE),
            routing=None,
            logits=logits_TE,
            stats_fn=stats,
            extra={"token_EC": token_EC, "gate_EC": gate_EC, "probs_TE": probs_TE},
        )
        return y_TD.view(x.shape), result
