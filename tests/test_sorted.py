"""The sort-based experts (padded batched matmul, grouped matmul) against the float64 oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minimoe
from minimoe.sorted import grouped_mm_path, loop_grouped_mm, sort_slots
from minimoe.testing import assert_close

IMPLS = [minimoe.padded_bmm_moe, minimoe.grouped_mm_moe]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-4), torch.float64: dict(atol=1e-11, rtol=1e-9)}

# (name, T, D, F, E, K): the awkward shapes of the design
SHAPES = [
    ("T=0", 0, 8, 12, 4, 2),
    ("T=1", 1, 8, 12, 4, 2),
    ("small", 9, 16, 12, 4, 2),
    ("D=100", 5, 100, 36, 3, 2),
    ("D=100,F odd", 4, 100, 30, 3, 1),
    ("K=E", 6, 8, 8, 3, 3),
]


def make_inputs(T, D, F, E, K, dtype, activation, routing="random", seed=0):
    gen = torch.Generator().manual_seed(seed)
    ex = minimoe.Experts(E, D, F, activation).to(dtype)
    x = torch.randn(T, D, generator=gen, dtype=dtype)
    if routing == "random":  # repeats within a token are allowed: the oracle handles them too
        expert = torch.randint(0, E, (T, K), generator=gen)
    elif routing == "one_expert":  # every token's first choice is expert 0
        expert = torch.arange(K).repeat(T, 1)
    elif routing == "empty_expert":  # expert E-1 gets nothing
        expert = torch.randint(0, E - 1, (T, K), generator=gen)
    elif routing == "topk":  # distinct experts per token, as a router gives
        expert = torch.rand(T, E, generator=gen).topk(K, dim=1).indices
    gate = torch.rand(T, K, generator=gen, dtype=dtype)
    return x, expert, gate, ex.params


def outputs_and_grads(fn, x, expert, gate, params, keep):
    """y and the gradients of <y, R> for x, gate, w1, w2, w3 (zeros where y does not depend)."""
    leaves = [x, gate, params.w1_EFD, params.w2_EDF] + (
        [params.w3_EFD] if params.w3_EFD is not None else []
    )
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    p = minimoe.ExpertParams(
        leaves[2], leaves[3], leaves[4] if len(leaves) > 4 else None, params.activation
    )
    y = fn(leaves[0], expert, leaves[1], p, keep)
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    if not y.requires_grad:
        return y, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad((y * R).sum(), leaves, allow_unused=True)
    return y, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def check_against_reference(fn, x, expert, gate, params, keep=None):
    y, grads = outputs_and_grads(fn, x, expert, gate, params, keep)
    y_ref, grads_ref = outputs_and_grads(minimoe.reference_moe, x, expert, gate, params, keep)
    tol = TOL[x.dtype]
    assert y.dtype == x.dtype
    assert_close(y, y_ref, name="y", **tol)
    for name, g, g_ref in zip(["x", "gate", "w1", "w2", "w3"], grads, grads_ref):
        assert_close(g, g_ref, name=f"grad {name}", **tol)


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_matches_reference_on_awkward_shapes(fn, dtype, activation, shape):
    _, T, D, F, E, K = shape
    check_against_reference(fn, *make_inputs(T, D, F, E, K, dtype, activation))


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("routing", ["one_expert", "empty_expert", "topk"])
@pytest.mark.parametrize("K", [1, 2])
def test_matches_reference_on_skewed_routing(fn, dtype, routing, K):
    check_against_reference(fn, *make_inputs(8, 16, 12, 4, K, dtype, "swiglu", routing))


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("policy", ["position", "k_major", "probs", "random", "batch_priority"])
def test_capacity_drops_match_reference(fn, policy):
    x, expert, gate, params = make_inputs(10, 16, 12, 4, 2, torch.float64, "swiglu", "topk")
    gen = torch.Generator().manual_seed(3)
    keep, _ = minimoe.assign_slots(expert, gate, 4, 3, policy, generator=gen)
    assert not keep.all()  # the capacity really drops something
    check_against_reference(fn, x, expert, gate, params, keep)


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_every_slot_dropped_gives_zeros_and_zero_grads(fn):
    x, expert, gate, params = make_inputs(3, 8, 12, 4, 2, torch.float64, "swiglu")
    keep = torch.zeros(3, 2, dtype=torch.bool)
    check_against_reference(fn, x, expert, gate, params, keep)
    assert_close(fn(x, expert, gate, params, keep), torch.zeros(3, 8, dtype=torch.float64))


def test_sort_slots_hand_computed():
    expert_TK = torch.tensor([[2, 0], [0, 1], [2, 2]])
    keep_TK = torch.tensor([[True, True], [True, False], [True, True]])
    order, counts, offsets, inverse = sort_slots(expert_TK, keep_TK, n_experts=4)
    # flat slots: 0:(t0,e2) 1:(t0,e0) 2:(t1,e0) 3:(t1,e1 dropped) 4:(t2,e2) 5:(t2,e2)
    assert order.tolist() == [1, 2, 0, 4, 5]
    assert counts.tolist() == [2, 0, 3, 0]
    assert offsets.tolist() == [2, 2, 5, 5] and offsets.dtype == torch.int32
    assert inverse.tolist() == [2, 0, 1, -1, 3, 4]


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(0, 12),
    E=st.integers(1, 6),
    data=st.data(),
)
def test_sort_slots_properties(T, E, data):
    K = data.draw(st.integers(1, E))
    seed = data.draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    expert = torch.randint(0, E, (T, K), generator=gen)
    keep = data.draw(st.sampled_from([None, "random"]))
    keep = None if keep is None else torch.rand(T, K, generator=gen) < 0.7
    order, counts, offsets, inverse = sort_slots(expert, keep, E)
    n_kept = T * K if keep is None else int(keep.sum())
    assert int(counts.sum()) == n_kept == order.numel()
    assert torch.equal(inverse[order], torch.arange(n_kept))  # the permutation round trip
    assert int((inverse >= 0).sum()) == n_kept  # dropped slots, and only they, get -1
    assert torch.equal(offsets.long(), torch.cumsum(counts, 0))
    sorted_expert = expert.reshape(-1)[order]
    assert torch.all(sorted_expert[1:] >= sorted_expert[:-1])
    assert torch.equal(torch.bincount(sorted_expert, minlength=E), counts)
    same = sorted_expert[1:] == sorted_expert[:-1]
    assert torch.all(order[1:][same] > order[:-1][same])  # stable: token order within an expert


def test_grouped_mm_path_native_or_fallback():
    _, _, _, p64 = make_inputs(2, 16, 12, 4, 2, torch.float64, "swiglu")
    x64 = torch.zeros(2, 16, dtype=torch.float64)
    assert grouped_mm_path(x64, p64) == "loop_grouped_mm"  # no float64 grouped matmul kernel
    _, _, _, p_odd = make_inputs(2, 16, 30, 4, 2, torch.float32, "swiglu")
    assert grouped_mm_path(torch.zeros(2, 16), p_odd) == "loop_grouped_mm"  # 120-byte stride
    if hasattr(torch.nn.functional, "grouped_mm"):
        _, _, _, p32 = make_inputs(2, 16, 12, 4, 2, torch.float32, "swiglu")
        assert grouped_mm_path(torch.zeros(2, 16), p32) == "torch.nn.functional.grouped_mm"


def test_loop_grouped_mm_hand_computed():
    a = torch.arange(6.0).view(3, 2)
    b = torch.stack([torch.eye(2), 2 * torch.eye(2), 3 * torch.eye(2)])
    out = loop_grouped_mm(a, b, [1, 0, 2])  # row 0 by expert 0, rows 1-2 by expert 2
    assert_close(out, torch.tensor([[0.0, 1.0], [6.0, 9.0], [12.0, 15.0]]))


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_deterministic(fn):
    x, expert, gate, params = make_inputs(64, 16, 12, 4, 2, torch.float32, "swiglu")
    assert torch.equal(fn(x, expert, gate, params), fn(x, expert, gate, params))


@pytest.mark.parametrize("fn", IMPLS, ids=lambda f: f.__name__)
def test_bad_input_raises(fn):
    x, expert, gate, params = make_inputs(4, 8, 12, 4, 2, torch.float32, "swiglu")
    with pytest.raises(ValueError, match="expert ids"):
        fn(x, expert + 4, gate, params)
    with pytest.raises(ValueError, match="keep_TK"):
        fn(x, expert, gate, params, torch.ones(4, 2))
    with pytest.raises(TypeError, match="float64"):
        fn(x.double(), expert, gate, params)
    with pytest.raises(ValueError, match="expert ids"):
        sort_slots(expert, None, n_experts=2)
