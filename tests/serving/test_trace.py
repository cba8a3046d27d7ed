"""The routing trace format and its flattening into cache keys."""

from __future__ import annotations

import pytest
import torch

from minimoe.serving import RoutingTrace, flatten_trace, trace_keys_TLK


def test_flatten_order_token_layer_k():
    trace = RoutingTrace(n_experts=4, n_layers=2, top_k=2)
    trace.append(torch.tensor([[3, 1], [0, 2]]))
    trace.append(torch.tensor([[1, 3], [2, 0]]))
    # token 0: layer 0 -> 3, 1; layer 1 -> 4 + 0, 4 + 2; then token 1
    assert flatten_trace(trace) == [3, 1, 4, 6, 1, 3, 6, 4]
    assert trace_keys_TLK(trace).shape == (2, 2, 2)
    assert len(trace) == 2


def test_empty_trace():
    trace = RoutingTrace(8, 3, 2)
    assert flatten_trace(trace) == []
    assert trace.expert_TLK.shape == (0, 3, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="top_k"):
        RoutingTrace(4, 2, 5)
    trace = RoutingTrace(4, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        trace.append(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="expert ids"):
        trace.append(torch.tensor([[0, 4], [1, 2]]))
    with pytest.raises(TypeError, match="expert_LK"):
        trace.append(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="trace"):
        flatten_trace([[0, 1]])


def test_experts_touched_by_batches():
    from minimoe.serving import expected_experts_touched, experts_touched
    from minimoe.serving.simulate import random_trace

    same = RoutingTrace(4, 1, 2)
    for _ in range(6):
        same.append(torch.tensor([[0, 1]]))
    assert experts_touched(same, 3) == 2.0  # perfectly correlated routing: always the same 2
    assert experts_touched(same, 2, mode="consecutive") == 2.0
    alternating = RoutingTrace(4, 1, 1)
    for t in range(8):
        alternating.append(torch.tensor([[t % 2]]))
    assert experts_touched(alternating, 2, mode="consecutive") == 2.0
    uniform = random_trace(400, 2, 8, 2, seed=1)
    got = experts_touched(uniform, 4)
    assert abs(got - expected_experts_touched(8, 2, 4)) < 0.15  # 200 batches x 2 layers
    with pytest.raises(ValueError, match="mode"):
        experts_touched(uniform, 2, mode="all")
    with pytest.raises(ValueError, match="batch"):
        experts_touched(same, 7)
