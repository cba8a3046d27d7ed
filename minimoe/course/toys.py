"""A toy MoE written the way many tutorials write it, with the bug many of them have.

`ToyMoE.forward` routes each token to its top-k experts, then ignores that choice: it runs every
expert on every token and adds all E outputs, each weighted by the token's *first* gate. The
output is wrong (it is not the MoE the router chose) and the compute is E/K times too much: a
"fake sparse" MoE, as reported in kyegomez/SwitchTransformers issue #17. Chapter 01 shows the
bug and asks for the fix; `ToyMoE.expert_params` and `ToyMoE.routing` let a check compare any
forward with `minimoe.reference_moe`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.experts import ExpertParams
from minimoe.routing import Routing, route


class ToyExpert(nn.Module):
    """One SwiGLU expert as Mixtral writes it: w2(silu(w1 x) * w3 x), bias-free linears."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_ND)) * self.w3(x_ND))


class ToyMoE(nn.Module):
    """A router and E experts in an nn.ModuleList; routing as Mixtral (softmax, top-k, renormalise).

    Args:
        d_model, d_ff, n_experts, top_k: D, F, E, K.
        seed: seeds the weights, so a check can rebuild the same toy.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.top_k = top_k
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.router = nn.Linear(d_model, n_experts, bias=False)
            self.experts = nn.ModuleList(ToyExpert(d_model, d_ff) for _ in range(n_experts))

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        """The buggy forward: x_TD (T, D) -> (T, D)."""
        probs_TE = F.softmax(self.router(x_TD), dim=-1)
        gate_TK, expert_TK = probs_TE.topk(self.top_k, dim=-1)
        gate_TK = gate_TK / gate_TK.sum(dim=-1, keepdim=True)
        y_TD = torch.zeros_like(x_TD)
        for expert in self.experts:  # every expert sees every token ...
            y_TD = y_TD + gate_TK[:, :1] * expert(x_TD)  # ... weighted by the first gate
        return y_TD

    def routing(self, x_TD: torch.Tensor) -> Routing:
        """The routing the toy's router asks for: `minimoe.route` with the "mixtral" gating."""
        return route(self.router(x_TD), self.top_k, "mixtral")

    def expert_params(self) -> ExpertParams:
        """The experts' weights stacked in minimoe's layout, for `minimoe.reference_moe`."""
        w1_EFD = torch.stack([e.w1.weight for e in self.experts])
        w2_EDF = torch.stack([e.w2.weight for e in self.experts])
        w3_EFD = torch.stack([e.w3.weight for e in self.experts])
        return ExpertParams(w1_EFD, w2_EDF, w3_EFD, "swiglu")


class RowCounter:
    """Counts the rows (tokens) each expert of a `ToyMoE` processes, via forward hooks on w1.

    Use as a context manager; `rows_E` holds the counts after the block.
    """

    def __init__(self, toy: ToyMoE) -> None:
        self.toy = toy
        self.rows_E = [0] * len(toy.experts)
        self._handles: list = []

    def __enter__(self) -> RowCounter:
        for e, expert in enumerate(self.toy.experts):

            def hook(module: nn.Module, args: tuple, output: torch.Tensor, e: int = e) -> None:
                self.rows_E[e] += output.reshape(-1, output.shape[-1]).shape[0]

            self._handles.append(expert.w1.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def total(self) -> int:
        return sum(self.rows_E)
