"""Helpers for tests and exercise checks: compare tensors and say by how much they differ."""

from __future__ import annotations

import torch


def max_diff(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max absolute difference, max relative difference) between two tensors, in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    if a.numel() == 0:
        return 0.0, 0.0
    abs_diff = (a - e).abs()
    rel_diff = abs_diff / e.abs().clamp_min(1e-12)
    return float(abs_diff.max()), float(rel_diff.max())


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    name: str = "tensor",
) -> None:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise, with shapes equal.

    The message names the tensor, and gives the max abs/rel difference and where the worst
    element is, so a failure says how wrong, not just that it is wrong.
    """
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(
            f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        )
    if actual.numel() == 0:
        return
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if torch.isnan(a).any() and not torch.isnan(e).any():
        raise AssertionError(f"{name}: contains NaN where the expected values are finite")
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        abs_err, rel_err = max_diff(a, e)
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} elements differ; max abs diff "
            f"{abs_err:.3g}, max rel diff {rel_err:.3g} (atol={atol:g}, rtol={rtol:g}); "
            f"first at index {where}: got {a[where].item():.6g}, expected {e[where].item():.6g}"
        )
