"""Every registered experts implementation against the float64 oracle, outputs and gradients.

The implementations come from `minimoe.impls.IMPLEMENTATIONS`: an entry added there is tested
here with no further edit. Triton's entry runs in tests/triton/test_triton.py (its interpreter is for
tiny shapes, and needs Triton).
"""

from __future__ import annotations

import pytest
import torch

import minimoe
from minimoe.impls import IMPLEMENTATIONS, Implementation, get_impl
from minimoe.testing import assert_close, assert_matches_reference, make_experts_inputs

IMPLS = [
    pytest.param(impl.fn, id=name)
    for name, impl in IMPLEMENTATIONS.items()
    if name != "reference" and not impl.needs
]

# (name, T, D, F, E, K): the awkward shapes of the design
SHAPES = [
    ("T=0", 0, 8, 12, 4, 2),
    ("T=1", 1, 8, 12, 4, 2),
    ("small", 9, 16, 12, 4, 2),
    ("D=100", 5, 100, 36, 3, 2),
    ("D=100,F odd", 4, 100, 30, 3, 1),
    ("K=E", 6, 8, 8, 3, 3),
]


def test_the_registry_holds_every_implementation():
    shipped = ["reference", "loop", "einsum", "padded_bmm", "grouped_mm", "triton"]
    assert list(IMPLEMENTATIONS)[: len(shipped)] == shipped  # the oracle first, then by chapter
    for name, impl in IMPLEMENTATIONS.items():
        assert isinstance(impl, Implementation) and impl.name == name and callable(impl.fn)
        assert impl.cost_model in minimoe.accounting.COST_MODELS
        assert get_impl(name) is impl
    fns = [impl.fn for impl in IMPLEMENTATIONS.values()]
    assert len(set(fns)) == len(fns), "one function registered under two names"
    public = {minimoe.reference_moe, minimoe.loop_moe, minimoe.einsum_moe}
    public |= {minimoe.padded_bmm_moe, minimoe.grouped_mm_moe}
    assert public <= set(fns)
    # the padded ones are exactly those whose cost model pads to a capacity
    for name, impl in IMPLEMENTATIONS.items():
        assert impl.dropless == (impl.cost_model not in ("einsum", "padded_bmm")), name
    assert not IMPLEMENTATIONS["einsum"].dropless and not IMPLEMENTATIONS["padded_bmm"].dropless
    assert IMPLEMENTATIONS["triton"].needs == "triton" and not IMPLEMENTATIONS["loop"].needs


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown experts implementation 'trition'.*grouped_mm"):
        get_impl("trition")
    with pytest.raises(ValueError, match="unknown experts implementation"):
        get_impl(None)


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_cost_of_a_registered_name_is_its_models(name):
    impl = IMPLEMENTATIONS[name]
    by_name = minimoe.moe_cost(name, 64, 16, 32, 8, 2, capacity=12)
    by_model = minimoe.moe_cost(impl.cost_model, 64, 16, 32, 8, 2, capacity=12)
    assert by_name.impl == name
    assert by_name.executed_flops == by_model.executed_flops
    assert by_name.activation_bytes == by_model.activation_bytes
    assert (by_name.capacity is None) == impl.dropless


def test_triton_entry_loads_triton_on_first_call_only():
    import subprocess
    import sys

    code = (
        "import sys, minimoe.impls as m; m.IMPLEMENTATIONS['triton'];"
        "assert 'triton' not in sys.modules and 'minimoe.triton' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_matches_reference_on_awkward_shapes(fn, dtype, activation, shape):
    _, T, D, F, E, K = shape
    assert_matches_reference(fn, *make_experts_inputs(T, D, F, E, K, dtype, activation))


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("routing", ["one_expert", "empty_expert", "topk"])
@pytest.mark.parametrize("K", [1, 2])
def test_matches_reference_on_skewed_routing(fn, dtype, routing, K):
    assert_matches_reference(fn, *make_experts_inputs(8, 16, 12, 4, K, dtype, "swiglu", routing))


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("policy", ["position", "k_major", "probs", "random", "batch_priority"])
def test_capacity_drops_match_reference(fn, policy):
    x, expert, gate, params = make_experts_inputs(10, 16, 12, 4, 2, torch.float64, "swiglu", "topk")
    gen = torch.Generator().manual_seed(3)
    keep, _ = minimoe.assign_slots(expert, gate, 4, 3, policy, generator=gen)
    assert not keep.all()  # the capacity really drops something
    assert_matches_reference(fn, x, expert, gate, params, keep)


@pytest.mark.parametrize("fn", IMPLS)
def test_every_slot_dropped_gives_zeros_and_zero_grads(fn):
    x, expert, gate, params = make_experts_inputs(3, 8, 12, 4, 2, torch.float64, "swiglu")
    keep = torch.zeros(3, 2, dtype=torch.bool)
    assert_matches_reference(fn, x, expert, gate, params, keep)
    assert_close(fn(x, expert, gate, params, keep), torch.zeros(3, 8, dtype=torch.float64))


@pytest.mark.parametrize("fn", IMPLS)
def test_deterministic(fn):
    x, expert, gate, params = make_experts_inputs(64, 16, 12, 4, 2, torch.float32, "swiglu")
    assert torch.equal(fn(x, expert, gate, params), fn(x, expert, gate, params))


@pytest.mark.parametrize("fn", IMPLS)
def test_bad_input_raises(fn):
    x, expert, gate, params = make_experts_inputs(4, 8, 12, 4, 2, torch.float32, "swiglu")
    with pytest.raises(ValueError, match="expert ids"):
        fn(x, expert + 4, gate, params)
    with pytest.raises(TypeError, match="keep_TK"):
        fn(x, expert, gate, params, torch.ones(4, 2))
    with pytest.raises(TypeError, match="float64"):
        fn(x.double(), expert, gate, params)
