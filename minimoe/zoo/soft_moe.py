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

import torch
import torch.nn.functional as F

from minimoe.experts import ExpertParams, expert_ffn
from minimoe.validate import check_bool, check_float_tensor
from minimoe.zoo._validate import check_x_and_params

__all__ = ["soft_moe", "soft_moe_weights"]


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
