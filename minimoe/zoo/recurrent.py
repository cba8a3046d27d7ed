"""The layerwise recurrent router: a GRU carries routing state from one layer's router to the next.

Qiu et al. 2024, "Layerwise Recurrent Router for Mixture-of-Experts" (RMoE, arXiv 2408.06793),
section 3, eqs. 4-6, as the authors' code writes it (github.com/qiuzh20/RMoE,
llama_moe_rnn/llama_moe_modeling.py, `MixtralSparseMoeBlock.forward`):

    r[t]   = W_proj^(i) x^(i)[t]              project the layer's token to Z dims (eq. 4; per layer)
    h^(i)  = GRU(r, h^(i-1))                  one GRU cell shared by every layer (eq. 5)
    logits = W_out^(i) h^(i)                  the layer's router reads the GRU output (eq. 6)

Z is the router state size (the paper's `moe_router_rnn_hidden_size`), a local letter. The first
MoE layer starts from h = 0 (the code calls the cell without a state). The recurrence runs over
layers, not over the sequence: each token keeps its own state, so the router stays causal and
every token of a layer is computed in parallel. The cell is torch's `nn.GRUCell`, whose
equations (reset, update, candidate; h' = (1 - z) * n + z * h) are the authors' `CustomGRUCell`.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.validate import check_float_tensor, check_shape

__all__ = ["recurrent_router_step"]


def recurrent_router_step(
    x_TD: torch.Tensor,
    h_TZ: torch.Tensor | None,
    w_proj_ZD: torch.Tensor,
    cell: nn.GRUCell,
    w_out_EZ: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of the recurrent router: (logits_TE, h_next_TZ).

    r_TZ = x_TD @ w_proj_ZD.T; h_next_TZ = cell(r_TZ, h_TZ); logits_TE = h_next_TZ @ w_out_EZ.T.

    Args:
        x_TD: the layer's tokens.
        h_TZ: the state the previous layer's router left (None or zeros at the first layer).
        w_proj_ZD: this layer's projection to the router state size Z.
        cell: the `nn.GRUCell(Z, Z)` shared by every layer, in x's dtype.
        w_out_EZ: this layer's router, from the state to E logits.
    """
    check_float_tensor("x_TD", x_TD, dim=2)
    check_float_tensor("w_proj_ZD", w_proj_ZD, dim=2)
    check_float_tensor("w_out_EZ", w_out_EZ, dim=2)
    if not isinstance(cell, nn.GRUCell):
        raise TypeError(f"cell must be a torch.nn.GRUCell, got {type(cell).__name__}")
    T, D = x_TD.shape
    Z = w_proj_ZD.shape[0]
    check_shape("w_proj_ZD", w_proj_ZD, (Z, D), f" (Z, D={D})")
    if cell.input_size != Z:
        raise ValueError(f"cell.input_size={cell.input_size} must equal Z={Z} (rows of w_proj_ZD)")
    Zh = cell.hidden_size
    if w_out_EZ.shape[1] != Zh:
        raise ValueError(f"w_out_EZ must have shape (E, Z={Zh}), got {tuple(w_out_EZ.shape)}")
    if h_TZ is not None:
        check_float_tensor("h_TZ", h_TZ, dim=2)
        check_shape("h_TZ", h_TZ, (T, Zh), " (T, cell.hidden_size)")
    for name, t in [("w_proj_ZD", w_proj_ZD), ("w_out_EZ", w_out_EZ), ("cell", cell.weight_ih)]:
        if t.dtype != x_TD.dtype:
            raise TypeError(f"x_TD is {x_TD.dtype} but {name} is {t.dtype}; cast one")
    r_TZ = x_TD @ w_proj_ZD.t()
    if h_TZ is None:
        h_TZ = r_TZ.new_zeros(T, Zh)
    h_next_TZ = cell(r_TZ, h_TZ)
    logits_TE = h_next_TZ @ w_out_EZ.t()
    return logits_TE, h_next_TZ
