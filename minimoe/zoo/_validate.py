"""The checks the zoo's experts steps share: x and the experts' weights, as the core checks them."""

from __future__ import annotations

import torch

from minimoe.experts import validate_experts_inputs


def check_x_and_params(x_TD, params, name: str = "params") -> None:
    """x_TD (T, D) and an `ExpertParams` of matching D and dtype, checked by the core's rules.

    The core's check takes a routing too; an empty one (K = 0 slots per token) checks the rest.
    """
    for field in ("w1_EFD", "w2_EDF", "w3_EFD", "activation"):
        if not hasattr(params, field):
            raise TypeError(f"{name} must be an ExpertParams, got {type(params).__name__}")
    if not isinstance(x_TD, torch.Tensor):
        raise TypeError(f"x_TD must be a torch.Tensor, got {type(x_TD).__name__}")
    T = x_TD.shape[0] if x_TD.dim() else 0
    device = x_TD.device
    empty_TK = torch.zeros(T, 0, dtype=torch.int64, device=device)
    gate_TK = torch.zeros(
        T, 0, dtype=x_TD.dtype if x_TD.is_floating_point() else torch.float32, device=device
    )
    validate_experts_inputs(x_TD, empty_TK, gate_TK, params, None)
