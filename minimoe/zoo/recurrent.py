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

from minimoe.config import MoEConfig
from minimoe.experts import Experts
from minimoe.loop import loop_moe
from minimoe.routing import route
from minimoe.validate import check_float_tensor, check_shape
from minimoe.zoo.result import ZooResult, token_choice_losses, token_choice_stats

__all__ = ["RecurrentRouterLayer", "recurrent_router_step"]


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


class RecurrentRouterLayer(nn.Module):
    """A token-choice MoE layer whose router is one step of the layerwise recurrent router.

    The GRU cell is shared by every layer of a model (pass the same `cell`); the state travels
    in the forward's `context` dict under "recurrent_router_h" (the tiny LM makes one context per
    forward pass, so each pass starts from h = 0 at its first MoE layer). Without a context (a
    single layer) the state starts at 0.

    Args:
        cfg: the `MoEConfig` (D, F, E, K, gating, aux loss).
        cell: the shared `nn.GRUCell(Z, Z)` (default: a new one of `state_size`).
        state_size: Z when no cell is given (default D // 2: a router state smaller than D,
            as the paper projects each token to a lower dimension, eq. 4).
        experts_fn: the experts step.

    Dropless; the Switch aux loss and the z-loss on the logits, statistics as token choice.
    """

    uses_context = True

    def __init__(
        self,
        cfg: MoEConfig,
        *,
        cell: nn.GRUCell | None = None,
        state_size: int | None = None,
        experts_fn=loop_moe,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if cell is None:
            Z = max(1, cfg.d_model // 2) if state_size is None else state_size
            cell = nn.GRUCell(Z, Z)
        self.cell = cell
        Z = cell.hidden_size
        self.w_proj_ZD = nn.Parameter(torch.randn(cell.input_size, cfg.d_model) / cfg.d_model**0.5)
        self.w_out_EZ = nn.Parameter(torch.randn(cfg.n_experts, Z) / Z**0.5)
        self.experts = Experts(cfg.n_experts, cfg.d_model, cfg.d_ff, cfg.activation)
        self.experts_fn = experts_fn

    def inactive_params(self) -> int:
        per = sum(p.numel() for p in self.experts.parameters()) // self.cfg.n_experts
        return (self.cfg.n_experts - self.cfg.top_k) * per

    def forward(
        self, x: torch.Tensor, context: dict | None = None
    ) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        x_TD = x.reshape(-1, cfg.d_model)
        h_TZ = None if context is None else context.get("recurrent_router_h")
        logits_TE, h_next_TZ = recurrent_router_step(
            x_TD, h_TZ, self.w_proj_ZD, self.cell, self.w_out_EZ
        )
        if context is not None:
            context["recurrent_router_h"] = h_next_TZ
        routing = route(logits_TE.float(), cfg.top_k, cfg.gating)
        y_TD = self.experts_fn(
            x_TD, routing.expert_TK, routing.gate_TK.to(x.dtype), self.experts.params
        )
        aux, z = token_choice_losses(routing, cfg.aux_loss, cfg.n_experts)
        stats = token_choice_stats(routing, cfg.n_experts)
        return y_TD.view(x.shape), ZooResult(aux, z, routing, logits_TE, stats)
