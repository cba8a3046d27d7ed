"""The sort-based experts' own parts: sorting the slots, the grouped matmul path and its fallback.

Both sort-based implementations (padded batched matmul, grouped matmul) are tested against the
float64 oracle with every other registered implementation, in tests/impls/test_impls.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimoe.sorted import grouped_mm_path, loop_grouped_mm, sort_slots
from minimoe.testing import (
    REFERENCE_TOL,
    assert_close,
    make_experts_inputs,
)

TOL = REFERENCE_TOL

# (name, T, D, F, E, K): the awkward shapes of the design
SHAPES = [
    ("T=0", 0, 8, 12, 4, 2),
    ("T=1", 1, 8, 12, 4, 2),
    ("small", 9, 16, 12, 4, 2),
    ("D=100", 5, 100, 36, 3, 2),
    ("D=100,F odd", 4, 100, 30, 3, 1),
    ("K=E", 6, 8, 8, 3, 3),
]


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
    _, _, _, p64 = make_experts_inputs(2, 16, 12, 4, 2, torch.float64, "swiglu")
    x64 = torch.zeros(2, 16, dtype=torch.float64)
    assert grouped_mm_path(x64, p64) == "loop_grouped_mm"  # no float64 grouped matmul kernel
    _, _, _, p_odd = make_experts_inputs(2, 16, 30, 4, 2, torch.float32, "swiglu")
    assert grouped_mm_path(torch.zeros(2, 16), p_odd) == "loop_grouped_mm"  # 120-byte stride
    if hasattr(torch.nn.functional, "grouped_mm"):
        _, _, _, p32 = make_experts_inputs(2, 16, 12, 4, 2, torch.float32, "swiglu")
        assert grouped_mm_path(torch.zeros(2, 16), p32) == "torch.nn.functional.grouped_mm"


def test_loop_grouped_mm_hand_computed():
    a = torch.arange(6.0).view(3, 2)
    b = torch.stack([torch.eye(2), 2 * torch.eye(2), 3 * torch.eye(2)])
    out = loop_grouped_mm(a, b, [1, 0, 2])  # row 0 by expert 0, rows 1-2 by expert 2
    assert_close(out, torch.tensor([[0.0, 1.0], [6.0, 9.0], [12.0, 15.0]]))


def test_sort_slots_checks_the_expert_ids():
    _, expert, _, _ = make_experts_inputs(4, 8, 12, 4, 2, torch.float32, "swiglu")
    with pytest.raises(ValueError, match="expert ids"):
        sort_slots(expert, None, n_experts=2)
