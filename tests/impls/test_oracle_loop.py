import math

import pytest
import torch
import torch.nn.functional as F

from minimoe import ExpertParams, assign_slots, ffn, loop_moe, reference_moe, route
from minimoe.testing import assert_close, outputs_and_grads


def make_case(T, D, Fh, E, K, *, activation="swiglu", dtype=torch.float64, seed=0, experts=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g, dtype=dtype)
    w1 = torch.randn(E, Fh, D, generator=g, dtype=dtype) / math.sqrt(D)
    w2 = torch.randn(E, D, Fh, generator=g, dtype=dtype) / math.sqrt(Fh)
    w3 = (
        torch.randn(E, Fh, D, generator=g, dtype=dtype) / math.sqrt(D)
        if activation == "swiglu"
        else None
    )
    r = route(torch.randn(T, E, generator=g), K, "mixtral")
    expert = r.expert_TK if experts is None else experts
    gate = r.gate_TK.to(dtype)
    return x, expert, gate, ExpertParams(w1, w2, w3, activation)


def test_hand_computed_single_slot():
    x = torch.tensor([[1.0]])
    params = ExpertParams(torch.tensor([[[2.0]]]), torch.tensor([[[3.0]]]), None, "gelu")
    y = reference_moe(x, torch.tensor([[0]]), torch.tensor([[0.5]]), params)
    expected = 0.5 * 3.0 * F.gelu(torch.tensor(2.0))
    assert_close(y, expected.view(1, 1), name="0.5 * 3 * gelu(2)")
    assert_close(loop_moe(x, torch.tensor([[0]]), torch.tensor([[0.5]]), params), y)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_one_expert_top1_equals_dense_ffn_forward_and_backward(activation):
    x, _, _, p = make_case(6, 12, 20, 1, 1, activation=activation)
    expert = torch.zeros(6, 1, dtype=torch.long)
    gate = torch.ones(6, 1, dtype=torch.float64)
    dense = lambda x_, e_, g_, p_, k_=None: ffn(  # noqa: E731
        x_, p_.w1_EFD[0], p_.w2_EDF[0], None if p_.w3_EFD is None else p_.w3_EFD[0], p_.activation
    )
    y_ref, g_ref = outputs_and_grads(dense, x, expert, gate, p)
    for fn in (reference_moe, loop_moe):
        y, g = outputs_and_grads(fn, x, expert, gate, p)
        assert_close(y, y_ref, atol=1e-12, name=f"{fn.__name__} output")
        for name, a, b in zip(["x", "w1", "w2", "w3"], [g[0], *g[2:]], [g_ref[0], *g_ref[2:]]):
            assert_close(a, b, atol=1e-12, name=f"{fn.__name__} grad {name}")


AWKWARD = {
    "T=1": dict(T=1, D=8, Fh=16, E=4, K=2),
    "D=100": dict(T=7, D=100, Fh=24, E=4, K=2),
    "K=E": dict(T=5, D=8, Fh=12, E=3, K=3),
    "odd": dict(T=13, D=9, Fh=7, E=5, K=2),
    "empty-expert": dict(
        T=6, D=8, Fh=8, E=4, K=1, experts=torch.tensor([[0], [1], [0], [2], [1], [0]])
    ),
    "one-expert": dict(T=9, D=8, Fh=8, E=4, K=1, experts=torch.full((9, 1), 3)),
}


@pytest.mark.parametrize("case", sorted(AWKWARD))
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loop_equals_oracle_outputs_and_outputs_and_grads(case, activation, dtype):
    x, expert, gate, p = make_case(**AWKWARD[case], activation=activation, dtype=dtype)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-4)
    keep_options = [None]
    if expert.shape[0] > 2:
        keep_options.append(assign_slots(expert, gate, p.n_experts, 1, "position")[0])
    for keep in keep_options:
        y_ref, g_ref = outputs_and_grads(reference_moe, x, expert, gate, p, keep)
        y, g = outputs_and_grads(loop_moe, x, expert, gate, p, keep)
        assert y.dtype == dtype
        assert_close(y, y_ref, **tol, name=f"{case} output")
        for name, a, b in zip(["x", "gate", "w1", "w2", "w3"], g, g_ref):
            assert_close(a, b, **tol, name=f"{case} grad {name}")


def test_dropped_slots_contribute_nothing():
    x, expert, gate, p = make_case(5, 8, 8, 4, 2)
    keep = torch.zeros(5, 2, dtype=torch.bool)
    for fn in (reference_moe, loop_moe):
        assert torch.equal(fn(x, expert, gate, p, keep), torch.zeros_like(x))
    keep[:, 0] = True
    only_first = loop_moe(x, expert[:, :1], gate[:, :1], p)
    assert_close(loop_moe(x, expert, gate, p, keep), only_first, atol=1e-12)


def test_no_tokens():
    x, expert, gate, p = make_case(0, 8, 8, 4, 2)
    for fn in (reference_moe, loop_moe):
        assert fn(x, expert, gate, p).shape == (0, 8)


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda a: {**a, "x": a["x"][0]}, ValueError, "x_TD must have shape"),
        (lambda a: {**a, "x": a["x"][:, :5]}, ValueError, "x_TD must have shape"),
        (lambda a: {**a, "expert": a["expert"] + 10}, ValueError, "expert ids must be in"),
        (lambda a: {**a, "expert": a["expert"].float()}, TypeError, "must be int64 or int32"),
        (lambda a: {**a, "gate": a["gate"][:, :1]}, ValueError, "gate_TK"),
        (lambda a: {**a, "x": a["x"].float()}, TypeError, "cast one"),
        (lambda a: {**a, "keep": torch.ones(4, 2)}, TypeError, "keep_TK must be a bool"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, error, message):
    x, expert, gate, p = make_case(4, 8, 8, 4, 2)
    a = mutate({"x": x, "expert": expert, "gate": gate, "keep": None})
    for fn in (reference_moe, loop_moe):
        with pytest.raises(error, match=message):
            fn(a["x"], a["expert"], a["gate"], p, a["keep"])


def test_swiglu_needs_w3():
    x, expert, gate, p = make_case(4, 8, 8, 4, 2)
    with pytest.raises(ValueError, match="needs w3_EFD"):
        loop_moe(x, expert, gate, p._replace(w3_EFD=None))
