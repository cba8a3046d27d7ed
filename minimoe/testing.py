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


def is_plain_tensor(x) -> bool:
    """A torch.Tensor itself (or an nn.Parameter), not a subclass: a subclass can override the
    very operations a comparison relies on (`.all()`, `__bool__`, `__torch_function__`)."""
    return type(x) in (torch.Tensor, torch.nn.Parameter)


def is_close(actual, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """The yes/no form of `assert_close`: a plain tensor of the same shape, every element within
    atol + rtol * |expected|, and no NaN in `actual`."""
    if not is_plain_tensor(actual) or tuple(actual.shape) != tuple(expected.shape):
        return False
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.numel() == 0:
        return True
    return bool(((a - e).abs() <= atol + rtol * e.abs()).all()) and not bool(a.isnan().any())


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
    if not is_plain_tensor(actual):
        raise AssertionError(
            f"{name}: a {type(actual).__name__} (a torch.Tensor subclass), expected a plain tensor"
        )
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


# tolerances for comparing an experts implementation with the float64 oracle, by dtype
REFERENCE_TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float64: dict(atol=1e-11, rtol=1e-9),
}


def make_experts_inputs(
    T: int,
    D: int,
    F: int,
    E: int,
    K: int,
    dtype: torch.dtype = torch.float64,
    activation: str = "swiglu",
    routing: str = "random",
    seed: int = 0,
):
    """Seeded inputs of the experts step: (x_TD, expert_TK, gate_TK, params).

    routing: "random" (repeats within a token allowed: the oracle handles them), "topk"
    (distinct experts per token, as a router gives), "one_expert" (every first choice is
    expert 0), "empty_expert" (expert E-1 gets nothing).
    """
    from minimoe.experts import Experts

    gen = torch.Generator().manual_seed(seed)
    params = Experts(E, D, F, activation).to(dtype).params
    x = torch.randn(T, D, generator=gen, dtype=dtype)
    if routing == "random":
        expert = torch.randint(0, E, (T, K), generator=gen)
    elif routing == "one_expert":
        expert = torch.arange(K).repeat(T, 1)
    elif routing == "empty_expert":
        expert = torch.randint(0, E - 1, (T, K), generator=gen)
    elif routing == "topk":
        expert = torch.rand(T, E, generator=gen).topk(K, dim=1).indices
    else:
        raise ValueError(f"unknown routing {routing!r}")
    gate = torch.rand(T, K, generator=gen, dtype=dtype)
    return x, expert, gate, params


def outputs_and_grads(fn, x_TD, expert_TK, gate_TK, params, keep_TK=None):
    """y and the gradients of <y, R> (R seeded) for x, gate, w1, w2 and w3 (when present).

    A gradient the output does not depend on is returned as zeros, so an implementation whose
    output has no graph at all (every slot dropped) compares equal to one with zero gradients.
    """
    from minimoe.experts import ExpertParams

    w3 = [params.w3_EFD] if params.w3_EFD is not None else []
    leaves = [x_TD, gate_TK, params.w1_EFD, params.w2_EDF, *w3]
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    p = ExpertParams(leaves[2], leaves[3], leaves[4] if w3 else None, params.activation)
    y = fn(leaves[0], expert_TK, leaves[1], p, keep_TK)
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    if not y.requires_grad:
        return y, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad((y * R).sum(), leaves, allow_unused=True)
    return y, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def assert_matches_reference(fn, x_TD, expert_TK, gate_TK, params, keep_TK=None) -> None:
    """An experts implementation agrees with the float64 oracle: output, dtype and gradients."""
    from minimoe.reference import reference_moe

    y, grads = outputs_and_grads(fn, x_TD, expert_TK, gate_TK, params, keep_TK)
    y_ref, grads_ref = outputs_and_grads(reference_moe, x_TD, expert_TK, gate_TK, params, keep_TK)
    tol = REFERENCE_TOL[x_TD.dtype]
    assert y.dtype == x_TD.dtype, f"output dtype {y.dtype} != input dtype {x_TD.dtype}"
    assert_close(y, y_ref, name="y", **tol)
    for name, g, g_ref in zip(["x", "gate", "w1", "w2", "w3"], grads, grads_ref):
        assert_close(g, g_ref, name=f"grad {name}", **tol)
