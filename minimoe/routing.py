"""Gating conventions: from router logits to (experts, gate weights) per token.

Real systems make the gate weights in different ways, and the course teaches the differences:

| name          | weights of the K chosen experts                        | used by                          |
|---------------|--------------------------------------------------------|----------------------------------|
| "switch"      | p = softmax(l); w = p[top-k]  (no renormalisation)      | Switch Transformer (arXiv 2101.03961), Qwen2-MoE norm_topk_prob=False |
| "mixtral"     | w = p[top-k] / sum(p[top-k])                            | Mixtral (HF), DeepSpeed top2/topk, Tutel, vLLM renormalize=True |
| "shazeer"     | w = softmax(l[top-k])  (KeepTopK(-inf) then softmax)    | Shazeer et al. 2017 (arXiv 1701.06538), Megatron default |
| "deepseek_v3" | s = sigmoid(l); pick top-k of s + b; w = s[idx] / (sum s[idx] + 1e-20) * scale | DeepSeek-V3 (arXiv 2412.19437, eq. 15-16) |
| "deepseek_v3", norm_topk_prob=False | w = s[idx] * scale (no renormalisation) | HF DeepseekV3 `norm_topk_prob=False` |

"mixtral" and "shazeer" give identical weights (softmax is monotone and its normaliser cancels);
"switch" differs from both when K > 1. With K = 1, "shazeer" gives w = 1 exactly, so the task loss
sends no gradient to the router (Megatron-LM issue #894).

The DeepSeek-V3 bias `b` changes which experts are picked, never their weights. Its group-limited
top-k scores each group of experts by the sum of its two best (s + b) values, keeps the best
`topk_groups` groups and picks the top-k among their experts. We mask the other groups with -inf,
as Megatron and HF transformers 5.x do; a mask of 0 (older HF code) picks from a dropped group
once the kept groups' s + b are negative.

Selection noise (`select_noise_TE`, e.g. Gumbel) changes which experts are picked, never their
weights. By default it perturbs every choice; with `clean_first_choice=True` the first expert is
the argmax of the clean logits and only the others are picked on the noisy logits, with the
first masked out: DeepSpeed's `top2gating` with `top2_2nd_expert_sampling=True` (its default).

Ties: `torch.topk` picks among exactly equal logits in an order torch does not specify; DeepSpeed
uses `argmax` (the first index), and HF Mixtral takes the top-k of the *probabilities*, where
logits far below the maximum underflow to equal zeros. Only tied entries can differ (see the
reference documentation, "Ties").

Everything here runs in float32, whatever the activation dtype: a bf16 softmax creates ties that
flip the chosen expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minimoe.config import check_routing_args
from minimoe.validate import check_bool, check_float_tensor, check_shape


@dataclass
class Routing:
    """The routing decision for T tokens.

    Attributes:
        expert_TK: chosen experts, best first (int64).
        gate_TK: their gate weights (float32, differentiable w.r.t. the logits).
        probs_TE: the full distribution the balancing losses use: softmax(l), or sigmoid(l) for
            "deepseek_v3" (float32).
        logits_TE: the router logits (float32), for the z-loss.
    """

    expert_TK: torch.Tensor
    gate_TK: torch.Tensor
    probs_TE: torch.Tensor
    logits_TE: torch.Tensor


def _group_limited_mask(scores_TE: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Keep only the experts of the `topk_groups` best groups; the others become -inf."""
    T, E = scores_TE.shape
    grouped_TGe = scores_TE.view(T, n_groups, E // n_groups)
    best = min(2, E // n_groups)
    group_score_TG = grouped_TGe.topk(best, dim=-1).values.sum(-1)
    keep_group_TG = torch.zeros_like(group_score_TG, dtype=torch.bool)
    keep_group_TG.scatter_(1, group_score_TG.topk(topk_groups, dim=-1).indices, True)
    keep_TE = keep_group_TG.unsqueeze(-1).expand_as(grouped_TGe).reshape(T, E)
    return scores_TE.masked_fill(~keep_TE, float("-inf"))


def _first_clean_then_noisy(
    clean_TE: torch.Tensor, noisy_TE: torch.Tensor, top_k: int
) -> torch.Tensor:
    """The first expert by the clean scores; the other K-1 by the noisy scores, first excluded."""
    first_T1 = clean_TE.argmax(dim=-1, keepdim=True)
    if top_k == 1:
        return first_T1
    rest_TE = noisy_TE.scatter(1, first_T1, float("-inf"))
    return torch.cat([first_T1, rest_TE.topk(top_k - 1, dim=-1).indices], dim=1)


def route(
    logits_TE: torch.Tensor,
    top_k: int,
    gating: str = "mixtral",
    *,
    select_noise_TE: torch.Tensor | None = None,
    bias_E: torch.Tensor | None = None,
    n_groups: int = 1,
    topk_groups: int = 1,
    routed_scaling_factor: float = 1.0,
    norm_topk_prob: bool = True,
    clean_first_choice: bool = False,
) -> Routing:
    """Pick top_k experts per token and make their gate weights, by a named convention.

    Args:
        logits_TE: router logits (cast to float32 here).
        top_k: K, experts per token.
        gating: "switch", "mixtral", "shazeer" or "deepseek_v3" (see the module docstring).
        select_noise_TE: noise added to the logits for the *selection* only (Gumbel routing).
        bias_E: the selection-only bias of "deepseek_v3" (aux-loss-free balancing).
        n_groups, topk_groups: group-limited top-k ("deepseek_v3" only).
        routed_scaling_factor: scale of the "deepseek_v3" weights (> 0).
        norm_topk_prob: "deepseek_v3" only; False keeps the selected sigmoid scores as they are.
        clean_first_choice: pick the first expert on the clean logits and only the others on
            the noisy ones (DeepSpeed top2's second-expert sampling); needs select_noise_TE.

    Returns:
        A `Routing` with expert_TK (best first), gate_TK, probs_TE and logits_TE.
    """
    check_float_tensor("logits_TE", logits_TE, dim=2)
    T, E = logits_TE.shape
    if E < 1:
        raise ValueError(
            f"logits_TE must have at least one expert column, got {tuple(logits_TE.shape)}"
        )
    check_routing_args(
        E,
        top_k,
        gating,
        n_groups=n_groups,
        topk_groups=topk_groups,
        routed_scaling_factor=routed_scaling_factor,
        norm_topk_prob=norm_topk_prob,
    )
    check_bool("clean_first_choice", clean_first_choice)
    if bias_E is not None:
        if gating != "deepseek_v3":
            raise ValueError("a selection bias (bias_E) is only used by the 'deepseek_v3' gating")
        check_float_tensor("bias_E", bias_E)
        check_shape("bias_E", bias_E, (E,), " (n_experts,)")
    if select_noise_TE is not None:
        check_float_tensor("select_noise_TE", select_noise_TE)
        check_shape("select_noise_TE", select_noise_TE, (T, E), " (that of logits_TE)")
    if clean_first_choice and select_noise_TE is None:
        raise ValueError("clean_first_choice=True needs select_noise_TE (the noise of the others)")
    logits_TE = logits_TE.float()
    noisy_TE = logits_TE if select_noise_TE is None else logits_TE + select_noise_TE.float()

    if gating == "deepseek_v3":
        probs_TE = torch.sigmoid(logits_TE)
        select_TE = torch.sigmoid(noisy_TE) if select_noise_TE is not None else probs_TE
        select_TE = select_TE.detach()
        if bias_E is not None:
            select_TE = select_TE + bias_E.float()
        if n_groups > 1:
            select_TE = _group_limited_mask(select_TE, n_groups, topk_groups)
        if clean_first_choice:
            clean_TE = probs_TE.detach() + (0 if bias_E is None else bias_E.float())
            if n_groups > 1:
                clean_TE = _group_limited_mask(clean_TE, n_groups, topk_groups)
            expert_TK = _first_clean_then_noisy(clean_TE, select_TE, top_k)
        else:
            expert_TK = select_TE.topk(top_k, dim=-1).indices
        gate_TK = probs_TE.gather(1, expert_TK)
        if norm_topk_prob:
            gate_TK = gate_TK / (gate_TK.sum(-1, keepdim=True) + 1e-20)
        gate_TK = gate_TK * routed_scaling_factor
        return Routing(expert_TK, gate_TK, probs_TE, logits_TE)

    probs_TE = torch.softmax(logits_TE, dim=-1)
    # softmax is monotone, so the top-k of the logits is the top-k of the probabilities
    if clean_first_choice:
        expert_TK = _first_clean_then_noisy(logits_TE.detach(), noisy_TE.detach(), top_k)
    else:
        expert_TK = noisy_TE.detach().topk(top_k, dim=-1).indices
    if gating == "switch":
        gate_TK = probs_TE.gather(1, expert_TK)
    elif gating == "mixtral":
        gate_TK = probs_TE.gather(1, expert_TK)
        gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
    else:  # "shazeer": softmax over the K kept logits
        gate_TK = torch.softmax(logits_TE.gather(1, expert_TK), dim=-1)
    return Routing(expert_TK, gate_TK, probs_TE, logits_TE)
