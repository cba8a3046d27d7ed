"""The one-hot einsum experts (GShard / DeepSpeed dispatch and combine) against the float64 oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minimoe
from minimoe.testing import (
    REFERENCE_TOL,
    assert_close,
    assert_matches_reference,
    make_experts_inputs,
)

TOL = REFERENCE_TOL
SHAPES = [  # (name, T, D, F, E, K)
    ("T=0", 0, 8, 12, 4, 2),
    ("T=1", 1, 8, 12, 4, 2),
    ("small", 9, 16, 12, 4, 2),
    ("D=100", 5, 100, 30, 3, 2),
    ("K=E", 6, 8, 8, 3, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_matches_reference_on_awkward_shapes(dtype, activation, shape):
    _, T, D, F, E, K = shape
    assert_matches_reference(
        minimoe.einsum_moe, *make_experts_inputs(T, D, F, E, K, dtype, activation)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("routing", ["one_expert", "empty_expert", "topk"])
@pytest.mark.parametrize("K", [1, 2])
def test_matches_reference_on_skewed_routing(dtype, routing, K):
    assert_matches_reference(
        minimoe.einsum_moe, *make_experts_inputs(8, 16, 12, 4, K, dtype, "swiglu", routing)
    )


@pytest.mark.parametrize("policy", ["position", "k_major", "probs", "random", "batch_priority"])
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_capacity_drops_match_reference(policy, activation):
    x, expert, gate, params = make_experts_inputs(
        10, 16, 12, 4, 2, torch.float64, activation, "topk"
    )
    keep, _ = minimoe.assign_slots(
        expert, gate, 4, 3, policy, generator=torch.Generator().manual_seed(3)
    )
    assert not keep.all()  # the capacity really drops something
    assert_matches_reference(minimoe.einsum_moe, x, expert, gate, params, keep)


def test_every_slot_dropped_gives_zeros():
    x, expert, gate, params = make_experts_inputs(3, 8, 12, 4, 2, torch.float64)
    keep = torch.zeros(3, 2, dtype=torch.bool)
    assert_matches_reference(minimoe.einsum_moe, x, expert, gate, params, keep)


def test_dispatch_combine_hand_computed():
    expert_TK = torch.tensor([[0, 1], [0, 2], [0, 1]])
    gate_TK = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    dispatch, combine = minimoe.dispatch_combine_tensors(expert_TK, gate_TK, None, 3, capacity=2)
    # capacity 2, token order: expert 0 keeps tokens 0 and 1 and drops token 2
    expected = torch.zeros(3, 3, 2)
    expected[0, 0, 0], expected[0, 1, 0] = 0.6, 0.4  # token 0: first in experts 0 and 1
    expected[1, 0, 1], expected[1, 2, 0] = 0.7, 0.3  # token 1: second in expert 0, first in 2
    expected[2, 1, 1] = 0.5  # token 2: second in expert 1; its expert-0 slot is dropped
    assert_close(combine, expected)
    assert torch.equal(dispatch, expected > 0) and dispatch.dtype == torch.bool


def test_dispatch_uses_given_positions_and_capacity():
    expert_TK = torch.tensor([[1], [1], [0]])
    gate_TK = torch.ones(3, 1)
    keep_TK = torch.tensor([[True], [True], [True]])
    position_TK = torch.tensor([[1], [0], [2]])  # e.g. a priority order that put token 1 first
    dispatch, _ = minimoe.dispatch_combine_tensors(
        expert_TK, gate_TK, keep_TK, 2, capacity=4, position_TK=position_TK
    )
    assert dispatch.shape == (3, 2, 4)
    assert dispatch[0, 1, 1] and dispatch[1, 1, 0] and dispatch[2, 0, 2]
    assert int(dispatch.sum()) == 3


def test_capacity_none_is_the_max_load():
    expert_TK = torch.tensor([[0], [0], [0], [1]])
    dispatch, _ = minimoe.dispatch_combine_tensors(expert_TK, torch.ones(4, 1), None, 3)
    assert dispatch.shape == (4, 3, 3)  # expert 0 holds 3 tokens


def test_same_result_as_assign_slots_positions():
    """Positions from assign_slots (priority order) or by token order: different buffer layouts,
    the same output."""
    x, expert, gate, params = make_experts_inputs(12, 16, 12, 4, 2, torch.float64, routing="topk")
    keep, position = minimoe.assign_slots(expert, gate, 4, 4, "probs")
    d1, c1 = minimoe.dispatch_combine_tensors(expert, gate, keep, 4, 4, position_TK=position)
    d2, c2 = minimoe.dispatch_combine_tensors(expert, gate, keep, 4, 4)
    assert_close(c1.sum(2), c2.sum(2))  # the same (token, expert) pairs and weights
    assert torch.equal(d1.sum(2), d2.sum(2))


@settings(max_examples=50, deadline=None)
@given(T=st.integers(0, 10), E=st.integers(1, 5), data=st.data())
def test_dispatch_properties(T, E, data):
    K = data.draw(st.integers(1, E))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    expert = torch.randint(0, E, (T, K), generator=gen)
    gate = torch.rand(T, K, generator=gen, dtype=torch.float64)
    capacity = data.draw(st.one_of(st.none(), st.integers(0, 6)))
    dispatch, combine = minimoe.dispatch_combine_tensors(expert, gate, None, E, capacity)
    keep, _ = minimoe.assign_slots(expert, gate, E, capacity, "position")
    assert int(dispatch.sum()) == int(keep.sum())  # one entry per kept slot
    assert bool((dispatch.sum(0) <= 1).all())  # a buffer slot holds at most one token
    assert_close(combine.sum((1, 2)), (gate * keep).sum(1))  # each token's kept gate mass
    assert torch.equal(combine != 0, dispatch & (combine != 0))  # weights only where dispatched


def test_bad_input_raises():
    x, expert, gate, params = make_experts_inputs(4, 8, 12, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="expert ids"):
        minimoe.einsum_moe(x, expert + 4, gate, params)
    with pytest.raises(ValueError, match="more than C"):  # 3 kept slots on expert 0, C = 2
        minimoe.dispatch_combine_tensors(
            torch.zeros(3, 1, dtype=torch.long),
            torch.ones(3, 1),
            torch.ones(3, 1, dtype=torch.bool),
            4,
            capacity=2,
        )
    with pytest.raises(ValueError, match="capacity"):
        minimoe.dispatch_combine_tensors(expert, gate, None, 4, capacity=-1)
