"""FLOP and byte accounting, checked against values counted by hand.

The small shape: T=4 tokens, D=2, F=3, E=2 experts, K=1, SwiGLU (3 matmuls), 4-byte floats.
N = T*K = 4 routed slots; balanced C = ceil(4/2) = 2.
One matmul of R rows, D=2 by F=3, is 2*R*2*3 = 12*R FLOPs; an expert FFN over R rows is 36*R.
An FFN over R rows moves R*D (in) + 2*2*R*F (gate, up: written + read) + 2*R*F (activation:
written + read) + R*D (out) = 2R + 12R + 6R + 2R = 22*R elements.
"""

from __future__ import annotations

import pytest

from minimoe import moe_cost

SMALL = dict(T=4, D=2, F=3, E=2, K=1)


def test_useful_flops_are_the_same_for_every_implementation():
    for impl in ("loop", "einsum", "padded_bmm", "grouped_mm", "dense"):
        assert moe_cost(impl, **SMALL).useful_flops == 36 * 4  # 4 slots through one FFN


def test_loop_and_grouped_mm_by_hand():
    for impl in ("loop", "grouped_mm"):
        c = moe_cost(impl, **SMALL)
        assert c.executed_flops == 144 and c.wasted_flops == 0
        assert c.weight_bytes == 2 * 18 * 4  # 2 experts of 3 * 2 * 3 weights
        # gather 4 rows (8 read + 8 written), FFN 22*4 = 88, gather back 8, sum into T*D = 8
        assert c.activation_bytes == (16 + 88 + 8 + 8) * 4
        assert c.routing_tensor_bytes == 0 and c.capacity is None


def test_padded_bmm_by_hand():
    c = moe_cost("padded_bmm", **SMALL)
    assert c.capacity == 2 and c.executed_flops == 2 * 2 * 36  # E * C rows, no padding
    # gather 16, write the (2, 2, 2) buffer 8, FFN 88, gather back 8, combine 8 + 8
    assert c.activation_bytes == (16 + 8 + 88 + 8 + 8 + 8) * 4
    padded = moe_cost("padded_bmm", **SMALL, capacity=3)
    assert padded.executed_flops == 2 * 3 * 36 and padded.wasted_flops == 2 * 36


def test_einsum_by_hand():
    c = moe_cost("einsum", **SMALL)
    # FFN on E*C = 4 rows (144), plus dispatch and combine: 2 * (2 * T*E*C*D) = 2 * 64
    assert c.executed_flops == 144 + 128 and c.wasted_flops == 128
    # dispatch and combine tensors, T*E*C = 16 elements each, written and read, 4 bytes
    assert c.routing_tensor_bytes == 2 * 2 * 16 * 4
    # x in 8, buffer out 8, FFN 88, buffer in 8, y out 8
    assert c.activation_bytes == (16 + 88 + 16) * 4
    assert c.bytes_moved == c.weight_bytes + c.activation_bytes + c.routing_tensor_bytes


def test_dense_by_hand():
    c = moe_cost("dense", **SMALL)  # hidden K*F = 3
    assert c.executed_flops == c.useful_flops == 144
    assert c.weight_bytes == 18 * 4 and c.activation_bytes == 88 * 4


def test_gelu_has_two_matmuls_and_dtype_bytes_scale():
    assert moe_cost("loop", **SMALL, activation="gelu").useful_flops == 2 * 4 * 2 * 3 * 2
    c4, c2 = moe_cost("grouped_mm", **SMALL), moe_cost("grouped_mm", **SMALL, dtype_bytes=2)
    assert c4.bytes_moved == 2 * c2.bytes_moved and c4.executed_flops == c2.executed_flops


def test_capacity_limits_useful_flops():
    # C = 1: at most E*C = 2 of the 4 slots survive
    assert moe_cost("loop", **SMALL, capacity=1).useful_flops == 2 * 36


def test_einsum_overhead_grows_with_T():
    """The one-hot contractions cost O(T * E * C * D) = O(T^2): the reason einsum stops scaling."""
    shape = dict(D=512, F=1792, E=8, K=2)
    small, big = moe_cost("einsum", T=256, **shape), moe_cost("einsum", T=4096, **shape)
    assert big.wasted_flops == 16 * 16 * small.wasted_flops
    assert big.useful_flops == 16 * small.useful_flops


def test_as_dict_and_intensity():
    d = moe_cost("dense", **SMALL).as_dict()
    assert d["bytes_moved"] == (18 + 88) * 4
    assert d["arithmetic_intensity"] == pytest.approx(144 / ((18 + 88) * 4))
    assert moe_cost("loop", T=0, D=2, F=3, E=2, K=1).arithmetic_intensity == 0.0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="impl"):
        moe_cost("magic", **SMALL)
    with pytest.raises(ValueError, match="bad sizes"):
        moe_cost("loop", T=4, D=2, F=3, E=2, K=3)
    with pytest.raises(ValueError, match="activation"):
        moe_cost("loop", **SMALL, activation="tanh")
    with pytest.raises(ValueError, match="capacity"):
        moe_cost("einsum", **SMALL, capacity=-1)
