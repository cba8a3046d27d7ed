"""Every experts implementation reads its inputs through their strides: any memory layout of x,
the routing and each weight gives the oracle's answer, outputs and gradients.

The layouts: a transposed copy seen back through a transpose (same values, column-major
strides), and a strided slice of a larger tensor (a step of 2 along the last axis). w3 is laid
out differently from w1 on purpose: reading it with w1's strides was a silent wrong answer.
The Triton kernels run in the CPU interpreter here (tiny shapes).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from minimoe import ExpertParams, reference_moe
from minimoe.impls import IMPLEMENTATIONS
from minimoe.testing import assert_close, make_experts_inputs, outputs_and_grads

T, D, F, E, K = 5, 12, 20, 3, 2
TOL = dict(atol=5e-5, rtol=5e-4)


def _triton_impls():
    try:
        import minimoe.triton as mt
    except ImportError:  # pragma: no cover - triton is a test dependency on Linux
        return []
    return [
        pytest.param(mt.triton_moe, id="triton_moe"),
        pytest.param(mt.fused_experts_v3, id="fused_experts_v3"),
    ]


IMPLS = [
    *(pytest.param(impl.fn, id=name) for name, impl in IMPLEMENTATIONS.items() if not impl.needs),
    *_triton_impls(),
]


def column_major(t: torch.Tensor) -> torch.Tensor:
    """The same values with the last two axes' strides swapped."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def strided_slice(t: torch.Tensor) -> torch.Tensor:
    """The same values as a view with step 2 along the last axis of a twice-as-wide tensor."""
    wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype)
    if not t.is_floating_point():
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), -7, dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


LAYOUTS = {
    "x_column_major": dict(x=column_major),
    "x_strided": dict(x=strided_slice),
    "gate_column_major": dict(gate=column_major),
    "expert_and_keep_column_major": dict(expert=column_major, keep=column_major),
    "w1_column_major": dict(w1=column_major),
    "w2_strided": dict(w2=strided_slice),
    "w3_column_major": dict(w3=column_major),  # the layout that once read w1's strides
    "w3_strided_w1_column_major": dict(w1=column_major, w3=strided_slice),
    "everything": dict(
        x=strided_slice,
        gate=column_major,
        expert=column_major,
        keep=column_major,
        w1=strided_slice,
        w2=column_major,
        w3=column_major,
    ),
}


def _inputs(activation: str, seed: int):
    x, expert, gate, p = make_experts_inputs(T, D, F, E, K, torch.float32, activation, "topk", seed)
    keep = torch.rand(T, K, generator=torch.Generator().manual_seed(seed)) < 0.8
    return x, expert, gate, p, keep


def _relaid(layout: dict, x, expert, gate, p, keep):
    f = lambda key, t: t if t is None or key not in layout else layout[key](t.detach())  # noqa: E731
    params = ExpertParams(f("w1", p.w1_EFD), f("w2", p.w2_EDF), f("w3", p.w3_EFD), p.activation)
    return f("x", x), f("expert", expert), f("gate", gate), params, f("keep", keep)


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("fn", IMPLS)
def test_any_layout_gives_the_oracles_answer(fn, layout: str, activation: str) -> None:
    if activation != "swiglu" and "w3" in LAYOUTS[layout] and len(LAYOUTS[layout]) == 1:
        pytest.skip("no w3 without SwiGLU")
    x, expert, gate, p, keep = _inputs(activation, seed=len(layout))
    moved = _relaid(LAYOUTS[layout], x, expert, gate, p, keep)
    for name, t in zip(("x", "expert", "gate"), moved[:3]):
        if name in LAYOUTS[layout] and t.numel() > 1:
            assert not t.is_contiguous(), f"{name} should be laid out differently"
    y_ref, grads_ref = outputs_and_grads(reference_moe, x, expert, gate, p, keep)
    if fn.__name__ == "fused_experts_v3":  # forward only
        with torch.no_grad():
            assert_close(fn(*moved), y_ref, **TOL, name=f"{layout}: y")
        return
    y, grads = outputs_and_grads(fn, *moved)
    assert_close(y, y_ref, **TOL, name=f"{layout}: y")
    for name, g, g_ref in zip(["x", "gate", "w1", "w2", "w3"], grads, grads_ref):
        assert_close(g, g_ref, **TOL, name=f"{layout}: grad {name}")


def test_w3_layout_changes_nothing_in_triton_regression() -> None:
    """The case that was wrong by about 2 (forward and input gradient): w3 stored transposed."""
    mt = pytest.importorskip("minimoe.triton")
    x, expert, gate, p = make_experts_inputs(6, 16, 24, 4, 2, torch.float32, "swiglu", "topk", 3)
    p2 = p._replace(w3_EFD=column_major(p.w3_EFD.detach()))
    assert p2.w3_EFD.stride() != p.w1_EFD.stride()
    with torch.no_grad():
        y_ref = reference_moe(x, expert, gate, p)
        for fn in (mt.fused_experts_v3, partial(mt.triton_moe)):
            assert_close(fn(x, expert, gate, p2), y_ref, **TOL, name="y with w3 transposed")
