"""Gating conventions: from router logits to (experts, gate weights) per token.

Real systems make the gate weights in different ways, and the course teaches the differences:

| name          | weights of the K chosen experts                        | used by                          |
|---------------|--------------------------------------------------------|----------------------------------|
| "switch"      | p = softmax(l); w = p[top-k]  (no renormalisation)      | Switch Transformer (arXiv 2101.03961), Qwen2-MoE norm_topk_prob=False |
| "mixtral"     | w = p[top-k] / sum(p[top-k])                            | Mixtral (HF), DeepSpeed top2/topk, Tutel, vLLM renormalize=True |
| "shazeer"     | w = softmax(l[top-k])  (KeepTopK(-inf) then softmax)    | Shazeer et al. 2017 (arXiv 1701.06538), Megatron default |
| "deepseek_v3" | s = sigmoid(l); pick top-k of s + b; w = s[idx] / (sum s[idx] + 1e-20) * scale | DeepSeek-V3 (arXiv 2412.19437, eq. 15-16) |

"mixtral" and "shazeer" give identical weights (softmax is monotone and its normaliser cancels);
"switch" differs from both when K > 1. With K = 1, "shazeer" gives w = 1 exactly, so the task loss
sends no gradient to the router (Megatron-LM issue #894).

The DeepSeek-V3 bias `b` changes which experts are picked, never their weights. Its group-limited
top-k scores each group of experts by the sum of its two best (s + b) values, keeps the best
`topk_groups` groups and picks the top-k among their experts. We mask the other groups with -inf,
as Megatron and HF transformers 5.x do; a mask of 0 (older HF code) picks from a dropped group
once the kept groups' s + b are negative.

Everything here runs in float32, whatever the activation dtype: a bf16 softmax creates ties that
flip the chosen expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minimoe.config import GATINGS


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
) -> Routing:
    """Pick top_k experts per token and make their gate weights, by a named convention.

    Args:
        logits_TE: router logits (cast to float32 here).
        top_k: K, experts per token.
        gating: "switch", "mixtral", "shazeer" or "deepseek_v3" (see the module docstring).
        select_noise_TE: noise added to the logits for the *selection* only (Gumbel routing).
        bias_E: the selection-only bias of "deepseek_v3" (aux-loss-free balancing).
        n_groups, topk_groups: group-limited top-k ("deepseek_v3" only).
        routed_scaling_factor: scale of the "deepseek_v3" weights.

    Returns:
        A `Routing` with expert_TK (best first), gate_TK, probs_TE and logits_TE.
    """
    if logits_TE.dim() != 2:
        raise ValueError(f"logits_TE must be 2-D (tokens, experts), got {tuple(logits_TE.shape)}")
    T, E = logits_TE.shape
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in [1, n_experts={E}], got {top_k}")
    if gating not in GATINGS:
        raise ValueError(f"gating={gating!r} is not one of {GATINGS}")
    if bias_E is not None and gating != "deepseek_v3":
        raise ValueError("a selection bias is only used by the 'deepseek_v3' gating")
    if n_groups > 1 and gating != "deepseek_v3":
        raise ValueError("group-limited top-k is only used by the 'deepseek_v3' gating")
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
        expert_TK = select_TE.topk(top_k, dim=-1).indices
        gate_TK = probs_TE.gather(1, expert_TK)
        gate_TK = gate_TK / (gate_TK.sum(-1, keepdim=True) + 1e-20) * routed_scaling_factor
        return Routing(expert_TK, gate_TK, probs_TE, logits_TE)

    probs_TE = torch.softmax(logits_TE, dim=-1)
    # softmax is monotone, so the top-k of the logits is the top-k of the probabilities
    expert_TK = noisy_TE.detach().topk(top_k, dim=-1).indices
    if gating == "switch":
        gate_TK = probs_TE.gather(1, expert_TK)
    elif gating == "mixtral":
        gate_TK = probs_TE.gather(1, expert_TK)
        gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
    else:  # "shazeer": softmax over the K kept logits
        gate_TK = torch.softmax(logits_TE.gather(1, expert_TK), dim=-1)
    return Routing(expert_TK, gate_TK, probs_TE, logits_TE)
