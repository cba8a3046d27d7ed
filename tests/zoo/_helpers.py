"""Helpers of the zoo's tests: outputs and gradients of a function of several leaves."""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams, Experts


def experts(
    E: int, D: int, F: int, dtype=torch.float64, activation="swiglu", seed=0
) -> ExpertParams:
    torch.manual_seed(seed)
    return Experts(E, D, F, activation).to(dtype).params


def leaves_of(params: ExpertParams) -> list[torch.Tensor]:
    return [w for w in (params.w1_EFD, params.w2_EDF, params.w3_EFD) if w is not None]


def with_leaves(params: ExpertParams, leaves: list[torch.Tensor]) -> ExpertParams:
    w3 = leaves[2] if params.w3_EFD is not None else None
    return ExpertParams(leaves[0], leaves[1], w3, params.activation)


def value_and_grads(fn, *inputs: torch.Tensor, seed: int = 1):
    """y = fn(*leaves) and the gradients of <y, R> (R seeded) for every input (zeros if unused)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not y.requires_grad:
        return y, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad((y.double() * R).sum(), leaves, allow_unused=True)
    return y, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def assert_all_close(actual, expected, atol, rtol=0.0, name=""):
    for i, (a, b) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(
            a.double(), b.double(), atol=atol, rtol=rtol, msg=lambda m, i=i: f"{name}[{i}]: {m}"
        )
