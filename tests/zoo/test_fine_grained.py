"""Shared + routed experts (DeepSeekMoE, arXiv 2401.06066, eqs. 9-11) against a float64 loop."""

from __future__ import annotations

import pytest
import torch

from minimoe import ExpertParams, expert_ffn, loop_moe
from minimoe.zoo import shared_routed_forward
from minimoe.zoo.reference import shared_routed_loop
from tests.zoo._helpers import assert_all_close, experts, value_and_grads


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 3e-5)])
@pytest.mark.parametrize(
    "T, n_shared, E, K", [(9, 2, 8, 3), (4, 1, 4, 4), (0, 1, 4, 2), (5, 0, 3, 1)]
)
def test_matches_loop_outputs_and_grads(dtype, atol, T, n_shared, E, K):
    D = 6
    gen = torch.Generator().manual_seed(T)
    shared = (
        experts(n_shared, D, 8, dtype, seed=1)
        if n_shared
        else ExpertParams(
            torch.zeros(0, 8, D, dtype=dtype),
            torch.zeros(0, D, 8, dtype=dtype),
            torch.zeros(0, 8, D, dtype=dtype),
        )
    )
    routed = experts(E, D, 4, dtype, seed=2)  # fine-grained: smaller hidden size than shared
    x = torch.randn(T, D, generator=gen, dtype=dtype)
    expert = torch.rand(T, E, generator=gen).topk(K, dim=1).indices
    gate = torch.rand(T, K, generator=gen, dtype=dtype)

    def fn(impl):
        def f(x, gate, s1, s2, s3, r1, r2, r3):
            return impl(x, ExpertParams(s1, s2, s3), expert, gate, ExpertParams(r1, r2, r3))

        return f

    ins = [x, gate, *shared[:3], *routed[:3]]
    y, g = value_and_grads(fn(shared_routed_forward), *ins)
    y_ref, g_ref = value_and_grads(fn(shared_routed_loop), *ins)
    assert y.dtype == dtype
    assert_all_close([y, *g], [y_ref, *g_ref], atol=atol, rtol=1e-5)


def test_shared_expert_alone_when_every_slot_is_dropped():
    shared, routed = experts(1, 4, 6, seed=1), experts(3, 4, 5, seed=2)
    x = torch.randn(3, 4, dtype=torch.float64)
    expert = torch.tensor([[0], [1], [2]])
    gate = torch.ones(3, 1, dtype=torch.float64)
    keep = torch.zeros(3, 1, dtype=torch.bool)
    y = shared_routed_forward(x, shared, expert, gate, routed, keep_TK=keep)
    torch.testing.assert_close(y, expert_ffn(x, shared, 0), atol=1e-12, rtol=0)
    y_all = shared_routed_forward(x, shared, expert, gate, routed, experts_fn=loop_moe)
    torch.testing.assert_close(y_all - y, loop_moe(x, expert, gate, routed), atol=1e-12, rtol=0)


def test_bad_input():
    shared, routed = experts(1, 4, 6), experts(3, 5, 5)
    x = torch.randn(3, 4, dtype=torch.float64)
    e, g = torch.zeros(3, 1, dtype=torch.int64), torch.ones(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_TD"):
        shared_routed_forward(x, shared, e, g, routed)  # routed experts of another D
    with pytest.raises(TypeError, match="shared"):
        shared_routed_forward(x, None, e, g, experts(3, 4, 5))
    with pytest.raises(ValueError, match="expert"):
        shared_routed_forward(x, shared, e + 3, g, experts(3, 4, 5))
