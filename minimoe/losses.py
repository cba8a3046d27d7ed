"""Router losses: load balancing and the z-loss. Each is returned to the caller, never stored.

| function                       | formula                                        | value at perfect balance |
|--------------------------------|------------------------------------------------|--------------------------|
| `load_balancing_loss`          | E * sum_e f_e * P_e                            | 1 |
| `mixtral_load_balancing_loss`  | E * sum_k sum_e f_ke * P_e                     | K |
| `z_loss`                       | mean_t (logsumexp_e l_te)^2                    | (log E)^2 at l = 0 |

f_e is the fraction of routed assignments that go to expert e (not differentiable), and P_e the
mean router probability of e over tokens (the only path of the gradient). The first is the Switch
Transformer loss (arXiv 2101.03961, eq. 4) as DeepSpeed writes it: with `first_choice_only` f
counts only each token's first choice (DeepSpeed top1/top2), otherwise all K choices (DeepSpeed
topk). The second is HF transformers' `load_balancing_loss_func` (Mixtral, Qwen-MoE), where f_ke
is the fraction of tokens whose k-th choice is e; HF applies it to the logits of all layers
concatenated. The z-loss is ST-MoE's (arXiv 2202.08906, eq. 5).

Per-group averaging: with `group_size=S`, `load_balancing_loss` computes the loss on each group
of S consecutive tokens (one sequence) and returns the mean over groups. HF SwitchTransformers
(`load_balancing_loss_func`, transformers 5.23) computes E^2 * mean_{b,e}(f_be P_be), which is
exactly that mean over sequences; pooling all tokens (`group_size=None`) is DeepSpeed's form, and
hides a router that sends each sequence to its own expert.
"""

from __future__ import annotations

import torch

from minimoe.validate import (
    check_bool,
    check_expert_ids,
    check_float_tensor,
    check_index_tensor,
    check_mask,
    check_optional_int,
)


def _check_loss_inputs(probs_TE, expert_TK, mask_T) -> None:
    """Shapes and dtypes of a balancing loss's inputs, and the ids' range (one device sync)."""
    check_float_tensor("probs_TE", probs_TE, dim=2)
    check_index_tensor("expert_TK", expert_TK, dim=2)
    T, E = probs_TE.shape
    if expert_TK.shape[0] != T:
        raise ValueError(
            f"expert_TK has {expert_TK.shape[0]} tokens but probs_TE has {T}: shapes (T, K) and "
            "(T, E) must agree on T"
        )
    if mask_T is not None:
        check_mask("mask_T", mask_T, (T,))
    check_expert_ids(expert_TK, E)


def _masked_mean(v_T_: torch.Tensor, mask_T: torch.Tensor | None) -> torch.Tensor:
    if mask_T is None:
        return v_T_.mean(0)
    w_T = mask_T.to(v_T_.dtype).reshape(-1, *([1] * (v_T_.dim() - 1)))
    return (v_T_ * w_T).sum(0) / w_T.sum().clamp_min(1)


def load_balancing_loss(
    probs_TE: torch.Tensor,
    expert_TK: torch.Tensor,
    *,
    first_choice_only: bool = False,
    mask_T: torch.Tensor | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """Switch / DeepSpeed load-balancing loss, 1.0 at perfect balance.

    Args:
        probs_TE: full router distribution per token.
        expert_TK: chosen experts (before any capacity drop).
        first_choice_only: count only each token's first choice in f.
        mask_T: bool, True for real tokens; padding is left out of both f and P.
        group_size: None pools all T tokens; S computes the loss on each run of S tokens (one
            sequence) and averages over the groups, as HF SwitchTransformers. T must be a
            multiple of S.
    """
    _check_loss_inputs(probs_TE, expert_TK, mask_T)
    check_bool("first_choice_only", first_choice_only)
    check_optional_int("group_size", group_size, low=1)
    if group_size is not None and probs_TE.shape[0] % group_size:
        raise ValueError(
            f"T={probs_TE.shape[0]} tokens do not split into groups of group_size={group_size}"
        )
    return _load_balancing_loss(probs_TE, expert_TK, first_choice_only, mask_T, group_size)


def _load_balancing_loss(
    probs_TE: torch.Tensor,
    expert_TK: torch.Tensor,
    first_choice_only: bool = False,
    mask_T: torch.Tensor | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """`load_balancing_loss` without the checks (inputs valid by construction)."""
    T, E = probs_TE.shape
    if group_size is not None and T > group_size:
        G = T // group_size
        losses = [
            _load_balancing_loss(
                probs_TE[g * group_size : (g + 1) * group_size],
                expert_TK[g * group_size : (g + 1) * group_size],
                first_choice_only,
                None if mask_T is None else mask_T[g * group_size : (g + 1) * group_size],
            )
            for g in range(G)
        ]
        return torch.stack(losses).mean()
    if T == 0:
        return probs_TE.sum() * 0.0
    chosen_TK = expert_TK[:, :1] if first_choice_only else expert_TK
    onehot_TE = torch.zeros_like(probs_TE).scatter_add_(
        1, chosen_TK.long(), torch.ones_like(chosen_TK, dtype=probs_TE.dtype)
    )
    f_E = _masked_mean(onehot_TE, mask_T) / chosen_TK.shape[1]
    P_E = _masked_mean(probs_TE, mask_T)
    return E * (f_E * P_E).sum()


def mixtral_load_balancing_loss(
    probs_TE: torch.Tensor, expert_TK: torch.Tensor, *, mask_T: torch.Tensor | None = None
) -> torch.Tensor:
    """HF transformers' Mixtral load-balancing loss, K at perfect balance.

    Args:
        probs_TE: full router distribution per token (layers concatenated along T).
        expert_TK: chosen experts.
        mask_T: bool, True for real tokens.
    """
    _check_loss_inputs(probs_TE, expert_TK, mask_T)
    return _mixtral_load_balancing_loss(probs_TE, expert_TK, mask_T)


def _mixtral_load_balancing_loss(
    probs_TE: torch.Tensor, expert_TK: torch.Tensor, mask_T: torch.Tensor | None = None
) -> torch.Tensor:
    """`mixtral_load_balancing_loss` without the checks."""
    T, E = probs_TE.shape
    if T == 0:
        return probs_TE.sum() * 0.0
    onehot_TKE = torch.nn.functional.one_hot(expert_TK.long(), E).to(probs_TE.dtype)
    f_KE = _masked_mean(onehot_TKE, mask_T)
    P_E = _masked_mean(probs_TE, mask_T)
    return E * (f_KE * P_E).sum()


def z_loss(logits_TE: torch.Tensor, *, mask_T: torch.Tensor | None = None) -> torch.Tensor:
    """Router z-loss: mean over tokens of logsumexp(logits)^2 (ST-MoE).

    Args:
        logits_TE: router logits.
        mask_T: bool, True for real tokens.
    """
    check_float_tensor("logits_TE", logits_TE, dim=2)
    if mask_T is not None:
        check_mask("mask_T", mask_T, (logits_TE.shape[0],))
    if logits_TE.shape[0] == 0:
        return logits_TE.sum() * 0.0
    return _masked_mean(torch.logsumexp(logits_TE.float(), dim=-1) ** 2, mask_T)
