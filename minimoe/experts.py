"""The experts: E independent feed-forward networks, and the one signature every experts step shares.

An expert is a two-layer FFN: GELU, `w2 · gelu(w1 x)`; ReLU, `w2 · relu(w1 x)` (HF
SwitchTransformers' default, `dense_act_fn="relu"`); or SwiGLU as in Mixtral,
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
from minimoe.validate import check_choice, check_int, validate_experts_inputs

__all__ = [
    "ExpertParams",
    "Experts",
    "ExpertsFn",
    "activate",
    "expert_ffn",
    "ffn",
    "n_matrices",
    "validate_experts_inputs",
    "zero_with_graph",
]


class ExpertParams(NamedTuple):
    """The weights of E experts, stacked along a leading E axis.

    Attributes:
        w1_EFD: first (gate) projection, D -> F.
        w2_EDF: second (down) projection, F -> D.
        w3_EFD: up projection, D -> F ("swiglu" only, else None).
        activation: "gelu", "relu" or "swiglu".
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
    x_RD: torch.Tensor,
    w1_FD: torch.Tensor,
    w2_DF: torch.Tensor,
    w3_FD: torch.Tensor | None,
    activation: str,
) -> torch.Tensor:
    """One expert (or a dense FFN) applied to R rows: (R, D) -> (R, D)."""
    check_choice("activation", activation, ACTIVATIONS)
    h_RF = x_RD @ w1_FD.t()
    u_RF = None
    if activation == "swiglu":
        if w3_FD is None:
            raise ValueError("activation='swiglu' needs w3_FD (the up projection); got None")
        u_RF = x_RD @ w3_FD.t()
    return activate(h_RF, u_RF, activation) @ w2_DF.t()


def n_matrices(activation: str) -> int:
    """Weight matrices (and matmuls) per expert: 3 for "swiglu" (gate, up, down), else 2."""
    check_choice("activation", activation, ACTIVATIONS)
    return 3 if activation == "swiglu" else 2


def expert_ffn(x_RD: torch.Tensor, params: ExpertParams, e: int) -> torch.Tensor:
    """Expert e of `params` applied to R rows: (R, D) -> (R, D)."""
    check_int("expert e", e, low=0, high=params.n_experts - 1)
    w3_FD = None if params.w3_EFD is None else params.w3_EFD[e]
    return ffn(x_RD, params.w1_EFD[e], params.w2_EDF[e], w3_FD, params.activation)


def activate(h_RF: torch.Tensor, u_RF: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The expert's nonlinearity on the first projection h (and the up projection u for SwiGLU).

    "gelu" is the exact (erf) GELU, torch's default; "relu" is HF SwitchTransformers' default
    (`dense_act_fn="relu"`, T5's FFN); "swiglu" is Mixtral's silu(h) * u.
    """
    if activation == "swiglu":
        if u_RF is None:
            raise ValueError("activation='swiglu' needs the up projection u_RF; got None")
        return F.silu(h_RF) * u_RF
    if activation == "relu":
        return F.relu(h_RF)
    return F.gelu(h_RF)


def zero_with_graph(
    x_TD: torch.Tensor, gate_TK: torch.Tensor, params: ExpertParams
) -> torch.Tensor:
    """A (T, D) zero output that is still a function of x, the gates and every weight.

    For the case where no slot reaches an expert (T = 0, or every slot dropped): the output is
    exactly 0 and `y.sum().backward()` gives zero gradients to every input, as the vectorised
    implementations do. Sums over empty slices are exactly 0, whatever the values (even inf).
    """
    weights = [params.w1_EFD, params.w2_EDF] + (
        [params.w3_EFD] if params.w3_EFD is not None else []
    )
    anchor = sum(t[:0].sum().to(x_TD.dtype) for t in [x_TD, gate_TK, *weights])
    return torch.zeros_like(x_TD) + anchor


class Experts(nn.Module):
    """E expert FFNs as three stacked weight tensors (the layout of HF Mixtral v5 and torchtitan).

    Args:
        n_experts, d_model, d_ff: E, D, F.
        activation: "gelu", "relu" or "swiglu".
    """

    def __init__(self, n_experts: int, d_model: int, d_ff: int, activation: str = "swiglu") -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        n_experts, d_model = (
            check_int("n_experts", n_experts, low=1),
            check_int("d_model", d_model, low=1),
        )
        d_ff = check_int("d_ff", d_ff, low=1)
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
