"""The experts: E independent feed-forward networks, and the one signature every experts step shares.

An expert is a two-layer FFN: GELU, `w2 · gelu(w1 x)`, or SwiGLU as in Mixtral,
`w2 · (silu(w1 x) * w3 x)` (w1 = gate projection, w3 = up projection, w2 = down projection).

Every experts implementation (the float64 oracle, the loop over experts, the vectorised and
Triton ones) is a function with the same signature:

    experts_fn(x_TD, expert_TK, gate_TK, params, keep_TK=None) -> y_TD

    y[t] = sum over k with keep[t, k] of gate[t, k] * FFN_{expert[t, k]}(x[t])

A dropped slot (keep[t, k] = False) contributes 0: the token continues through the residual only.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ACTIVATIONS


class ExpertParams(NamedTuple):
    """The weights of E experts, stacked along a leading E axis.

    Attributes:
        w1_EFD: first (gate) projection, D -> F.
        w2_EDF: second (down) projection, F -> D.
        w3_EFD: up projection, D -> F ("swiglu" only, else None).
        activation: "gelu" or "swiglu".
    """

    w1_EFD: torch.Tensor
    w2_EDF: torch.Tensor
    w3_EFD: torch.Tensor | None = None
    activation: str = "swiglu"

    @property
    def n_experts(self) -> int:
        return self.w1_EFD.shape[0]


class ExpertsFn(Protocol):
    def __call__(
        self,
        x_TD: torch.Tensor,
        expert_TK: torch.Tensor,
        gate_TK: torch.Tensor,
        params: ExpertParams,
        keep_TK: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def ffn(
    x_ND: torch.Tensor,
    w1_FD: torch.Tensor,
    w2_DF: torch.Tensor,
    w3_FD: torch.Tensor | None,
    activation: str,
) -> torch.Tensor:
    """One expert (or a dense FFN) applied to N rows: (N, D) -> (N, D)."""
    h_NF = x_ND @ w1_FD.t()
    if activation == "swiglu":
        h_NF = F.silu(h_NF) * (x_ND @ w3_FD.t())
    else:
        h_NF = F.gelu(h_NF)
    return h_NF @ w2_DF.t()


def expert_ffn(x_ND: torch.Tensor, params: ExpertParams, e: int) -> torch.Tensor:
    """Expert e of `params` applied to N rows: (N, D) -> (N, D)."""
    w3_FD = None if params.w3_EFD is None else params.w3_EFD[e]
    return ffn(x_ND, params.w1_EFD[e], params.w2_EDF[e], w3_FD, params.activation)


def validate_experts_inputs(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None,
) -> None:
    """Raise a clear error for inputs that would otherwise give a silent wrong answer."""
    if params.activation not in ACTIVATIONS:
        raise ValueError(f"activation={params.activation!r} is not one of {ACTIVATIONS}")
    if params.w1_EFD.dim() != 3 or params.w2_EDF.dim() != 3:
        raise ValueError("w1_EFD and w2_EDF must be 3-D (experts, ..., ...)")
    E, F_, D = params.w1_EFD.shape
    if tuple(params.w2_EDF.shape) != (E, D, F_):
        raise ValueError(f"w2_EDF has shape {tuple(params.w2_EDF.shape)}, expected {(E, D, F_)}")
    if params.activation == "swiglu":
        if params.w3_EFD is None or tuple(params.w3_EFD.shape) != (E, F_, D):
            raise ValueError(f"'swiglu' needs w3_EFD of shape {(E, F_, D)}")
    if x_TD.dim() != 2 or x_TD.shape[1] != D:
        raise ValueError(f"x_TD must have shape (T, D={D}), got {tuple(x_TD.shape)}")
    T = x_TD.shape[0]
    if expert_TK.dim() != 2 or expert_TK.shape[0] != T:
        raise ValueError(f"expert_TK must have shape (T={T}, K), got {tuple(expert_TK.shape)}")
    if expert_TK.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"expert_TK must be int64 or int32, got {expert_TK.dtype}")
    if gate_TK.shape != expert_TK.shape:
        raise ValueError(f"gate_TK {tuple(gate_TK.shape)} != expert_TK {tuple(expert_TK.shape)}")
    if not gate_TK.is_floating_point():
        raise TypeError(f"gate_TK must be floating point, got {gate_TK.dtype}")
    if keep_TK is not None and (keep_TK.shape != expert_TK.shape or keep_TK.dtype != torch.bool):
        raise ValueError("keep_TK must be a bool tensor with the shape of expert_TK")
    weights = [params.w1_EFD, params.w2_EDF] + (
        [params.w3_EFD] if params.w3_EFD is not None else []
    )
    for w in weights:
        if w.dtype != x_TD.dtype:
            raise TypeError(f"x_TD is {x_TD.dtype} but an expert weight is {w.dtype}; cast one")
    tensors = [x_TD, expert_TK, gate_TK, *weights] + ([keep_TK] if keep_TK is not None else [])
    if len({t.device for t in tensors}) > 1:
        raise ValueError(
            f"inputs are on different devices: {sorted({str(t.device) for t in tensors})}"
        )
    if expert_TK.numel():
        lo, hi = torch.aminmax(expert_TK)  # one reduction, one device sync
        lo, hi = torch.stack([lo, hi]).tolist()
        if lo < 0 or hi >= E:
            raise ValueError(f"expert ids must be in [0, {E}), got [{lo}, {hi}]")


class Experts(nn.Module):
    """E expert FFNs as three stacked weight tensors (the layout of HF Mixtral v5 and torchtitan).

    Args:
        n_experts, d_model, d_ff: E, D, F.
        activation: "gelu" or "swiglu".
    """

    def __init__(self, n_experts: int, d_model: int, d_ff: int, activation: str = "swiglu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {ACTIVATIONS}")
        self.activation = activation
        self.w1_EFD = nn.Parameter(torch.randn(n_experts, d_ff, d_model) / d_model**0.5)
        self.w2_EDF = nn.Parameter(torch.randn(n_experts, d_model, d_ff) / d_ff**0.5)
        self.w3_EFD = (
            nn.Parameter(torch.randn(n_experts, d_ff, d_model) / d_model**0.5)
            if activation == "swiglu"
            else None
        )

    @property
    def params(self) -> ExpertParams:
        return ExpertParams(self.w1_EFD, self.w2_EDF, self.w3_EFD, self.activation)
