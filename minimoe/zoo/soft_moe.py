"""Soft MoE: every expert sees weighted averages of all tokens, every token a weighted average of all slots.

Puigcerver et al. 2023, "From Sparse to Soft Mixtures of Experts" (arXiv 2308.00951), section 2.1,
eqs. 1-3. Each of the E experts has C slots (the paper's p slots per expert; C here, as the
capacity of the glossary: the rows one expert processes), each slot a learned vector phi[:, e, c]:

    logits[t, e, c] = x[t] . phi[:, e, c]
    D[t, e, c] = softmax over tokens t of logits[:, e, c]       (dispatch, eq. 1)
    x~[e, c]   = sum_t D[t, e, c] x[t]                           (slot inputs)
    y~[e, c]   = FFN_e(x~[e, c])
    C[t, e, c] = softmax over all E*C slots of logits[t, :, :]   (combine, eq. 2)
    y[t]       = sum_{e, c} C[t, e, c] y~[e, c]                  (eq. 3)

No token is dropped and every weight is differentiable (there is no discrete choice at all). The
cost: a slot mixes every token of the group, so in a decoder the output at position t depends
on later tokens (`minimoe.zoo.causality` measures it); the paper names auto-regressive decoding
as an open problem (section 6).

Normalisation (section 2.3, optional here, default off): with `normalize=True` the tokens are
L2-normalised over D and phi over D for each slot, times a learned scalar `scale`, which the
paper uses to keep the logits from growing with D at large model widths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import ExpertParams, Experts, expert_ffn
from minimoe.validate import check_bool, check_float_tensor, check_int, check_optional_int
from minimoe.zoo._validate import check_x_and_params
from minimoe.zoo.result import ZooResult, stats_from_counts

__all__ = ["SoftMoELayer", "soft_moe", "soft_moe_groups", "soft_moe_weights"]


def soft_moe_weights(logits_TEC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dispatch and combine weights of Soft MoE from its logits (arXiv 2308.00951, eqs. 1-2).

    Args:
        logits_TEC: x[t] . phi[:, e, c] for every token t, expert e and slot c (float32/64).

    Returns:
        (dispatch_TEC, combine_TEC): dispatch sums to 1 over tokens for each slot (e, c);
        combine sums to 1 over all E*C slots for each token.
    """
    check_float_tensor("logits_TEC", logits_TEC, dim=3)
    T, E, C = logits_TEC.shape
    if E < 1 or C < 1:
        raise ValueError(
            f"logits_TEC must have at least one expert and one slot, got {tuple(logits_TEC.shape)}"
        )
    dispatch_TEC = torch.softmax(logits_TEC, dim=0)
    combine_TEC = torch.softmax(logits_TEC.reshape(T, E * C), dim=1).reshape(T, E, C)
    return dispatch_TEC, combine_TEC


def soft_moe(
    x_TD: torch.Tensor,
    phi_DEC: torch.Tensor,
    params: ExpertParams,
    *,
    normalize: bool = False,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """The Soft MoE layer's experts step (arXiv 2308.00951, eqs. 1-3; see the module docstring).

    Args:
        x_TD: the tokens of one routing group.
        phi_DEC: the slot parameters, one D-vector per expert e and slot c.
        params: the E experts' weights.
        normalize: L2-normalise x and phi over D first, with `scale` (section 2.3); default off.
        scale: the learned scalar of the normalisation (used only with normalize=True).

    Returns:
        y_TD in x's dtype.
    """
    check_x_and_params(x_TD, params)
    check_float_tensor("phi_DEC", phi_DEC, dim=3)
    check_bool("normalize", normalize)
    D, E, C = phi_DEC.shape
    if D != x_TD.shape[1]:
        raise ValueError(f"phi_DEC must have shape (D={x_TD.shape[1]}, E, C), got {(D, E, C)}")
    if E != params.n_experts:
        raise ValueError(f"phi_DEC has E={E} experts but params has {params.n_experts}")
    if phi_DEC.dtype != x_TD.dtype:
        raise TypeError(f"x_TD is {x_TD.dtype} but phi_DEC is {phi_DEC.dtype}")
    if normalize:
        x_TD = F.normalize(x_TD, dim=1)
        phi_DEC = scale * F.normalize(phi_DEC, dim=0)
    logits_TEC = torch.einsum("td,dec->tec", x_TD, phi_DEC)
    dispatch_TEC, combine_TEC = soft_moe_weights(logits_TEC)
    xs_ECD = torch.einsum("tec,td->ecd", dispatch_TEC, x_TD)
    ys_ECD = torch.stack([expert_ffn(xs_ECD[e], params, e) for e in range(E)])
    return torch.einsum("tec,ecd->td", combine_TEC, ys_ECD)


def soft_moe_groups(
    x_GSD: torch.Tensor, phi_DEC: torch.Tensor, params: ExpertParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """`soft_moe` on G routing groups of S tokens at once (each group has its own slots).

    Returns:
        (y_GSD, combine_GSEC): the outputs, and the combine weights (for statistics and plots).
    """
    G, S, D = x_GSD.shape
    _, E, C = phi_DEC.shape
    logits_GSEC = torch.einsum("gsd,dec->gsec", x_GSD, phi_DEC)
    dispatch_GSEC = torch.softmax(logits_GSEC, dim=1)
    combine_GSEC = torch.softmax(logits_GSEC.reshape(G, S, E * C), dim=2).reshape(G, S, E, C)
    xs_GECD = torch.einsum("gsec,gsd->gecd", dispatch_GSEC, x_GSD)
    ys_EGCD = torch.stack(
        [expert_ffn(xs_GECD[:, e].reshape(G * C, D), params, e).view(G, C, D) for e in range(E)]
    )
    y_GSD = torch.einsum("gsec,egcd->gsd", combine_GSEC, ys_EGCD)
    return y_GSD, combine_GSEC


class SoftMoELayer(nn.Module):
    """A Soft MoE layer (arXiv 2308.00951), returning (y, ZooResult).

    Args:
        cfg: the `MoEConfig` (D, F, E, activation).
        slots_per_expert: C, slots per expert per routing group. For the compute of top-K token
            choice, E * C = K * (tokens per group): the default needs `group_size`.
        group_size: tokens per routing group for (T, D) input (T must be a multiple). Input of
            shape (B, S, D) is routed one sequence per group, as the paper routes one image.
        normalize: the paper's L2 normalisation (section 2.3) with a learned scale.

    Statistics: load_E = slots each expert processed (C per group: equal by construction);
    routed_E = tokens whose largest combine weight lies in expert e's slots (whom each token
    listens to most); entropy = of each token's combine weights summed per expert. No drops,
    no auxiliary loss (the paper uses none); z_loss is 0.
    """

    uses_context = False

    def __init__(
        self,
        cfg: MoEConfig,
        *,
        slots_per_expert: int | None = None,
        group_size: int | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.group_size = check_optional_int("group_size", group_size, low=1)
        if slots_per_expert is None:
            if group_size is None:
                raise ValueError("give slots_per_expert, or group_size to derive it")
            slots_per_expert = math.ceil(cfg.top_k * group_size / cfg.n_experts)
        self.slots_per_expert = check_int("slots_per_expert", slots_per_expert, low=1)
        self.normalize = check_bool("normalize", normalize)
        D, E, C = cfg.d_model, cfg.n_experts, self.slots_per_expert
        # the paper initialises phi like a linear layer's weights (LeCun normal): std 1/sqrt(D)
        self.phi_DEC = nn.Parameter(torch.randn(D, E, C) / D**0.5)
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.experts = Experts(E, D, cfg.d_ff, cfg.activation)

    def inactive_params(self) -> int:
        """Compute-equivalent: every expert sees every token through the slot averages, but
        the E * C slot rows cost K expert applications per token; counted as (E - K) idle."""
        per_expert = sum(p.numel() for p in self.experts.parameters()) // self.cfg.n_experts
        return (self.cfg.n_experts - self.cfg.top_k) * per_expert

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        if x.dim() == 3:
            x_GSD = x
        else:
            x_TD = x.reshape(-1, cfg.d_model)
            S = self.group_size or x_TD.shape[0]
            if x_TD.shape[0] % S:
                raise ValueError(f"T={x_TD.shape[0]} tokens do not split into groups of {S}")
            x_GSD = x_TD.view(-1, S, cfg.d_model)
        phi_DEC = self.phi_DEC.to(x.dtype)
        if self.normalize:
            x_GSD = F.normalize(x_GSD, dim=-1)
            phi_DEC = self.scale * F.normalize(phi_DEC, dim=0)
        y_GSD, combine_GSEC = soft_moe_groups(x_GSD, phi_DEC, self.experts.params)
        E, C = cfg.n_experts, self.slots_per_expert
        G = x_GSD.shape[0]

        def stats():
            w_TE = combine_GSEC.detach().sum(-1).reshape(-1, E)
            routed_E = (
                torch.bincount(w_TE.argmax(-1).cpu(), minlength=E)
                if w_TE.numel()
                else torch.zeros(E, dtype=torch.long)
            )
            load_E = torch.full((E,), G * C, dtype=torch.long)
            return stats_from_counts(routed_E, load_E, 0.0, w_TE)

        zero = y_GSD.new_zeros(()).float()
        result = ZooResult(zero, zero, None, None, stats, {"combine_GSEC": combine_GSEC})
        return y_GSD.reshape(x.shape), result
