"""Bad input at every public entry: a TypeError or ValueError that names the argument, never a
silent wrong answer or an error from deep inside torch. Plus the edges that must work: T = 0 and
every slot dropped keep an autograd graph in every implementation, and the layer's forward makes
exactly one device sync for validation (the expert-id range, in the experts step).

`BAD_INPUTS` is one table, entry -> list of (call, error, message); `test_bad_input` runs every
row and `test_every_public_entry_is_tried` checks that each entry of `minimoe.__all__` that takes
arguments has rows.
"""

from __future__ import annotations

import math

import pytest
import torch

import minimoe
from minimoe import (
    ExpertParams,
    Experts,
    MoEConfig,
    MoELayer,
    Router,
    assign_slots,
    count_decoder_params,
    count_moe_params,
    dispatch_combine_tensors,
    einsum_moe,
    expert_capacity,
    expert_ffn,
    ffn,
    grouped_mm_moe,
    load_balancing_loss,
    loop_moe,
    mixtral_load_balancing_loss,
    moe_cost,
    padded_bmm_moe,
    random_second_expert,
    reference_moe,
    renormalize_survivors,
    route,
    routing_stats,
    sort_slots,
    z_loss,
)
from minimoe.testing import make_experts_inputs

E_, K_ = 5, 2
X, EXPERT, GATE, PARAMS = make_experts_inputs(6, 8, 10, E_, K_, torch.float32, "swiglu", "topk", 0)
EXPERT[5] = torch.tensor([E_ - 1, 0])  # every id from 0 to E-1 is used
assert set(EXPERT.unique().tolist()) == set(range(E_))
LOGITS = torch.randn(6, E_, generator=torch.Generator().manual_seed(1))
PROBS = LOGITS.softmax(-1)
BASE = dict(d_model=8, d_ff=16, n_experts=4, top_k=2)


def cfg(**changes):
    return lambda: MoEConfig(**{**BASE, **changes})


def experts_rows(fn):
    """Bad inputs every experts implementation must refuse."""
    bad_ids = EXPERT.clone()
    bad_ids[3, 1] = E_  # one id out of range
    neg_ids = EXPERT.clone()
    neg_ids[0, 0] = -1
    return [
        (lambda: fn(X, bad_ids, GATE, PARAMS), ValueError, r"expert ids must be in \[0, 5\)"),
        (lambda: fn(X, neg_ids, GATE, PARAMS), ValueError, "expert ids must be in"),
        (lambda: fn(X, EXPERT.float(), GATE, PARAMS), TypeError, "expert_TK must be int64"),
        (lambda: fn(X, EXPERT, GATE[:, :1], PARAMS), ValueError, "gate_TK must have shape"),
        (lambda: fn(X, EXPERT, GATE.long(), PARAMS), TypeError, "gate_TK must be a floating"),
        (lambda: fn(X[:, :7], EXPERT, GATE, PARAMS), ValueError, "x_TD must have shape"),
        (lambda: fn(X.double(), EXPERT, GATE, PARAMS), TypeError, "cast one"),
        (
            lambda: fn(X, EXPERT, GATE, PARAMS, torch.ones(6, 2)),
            TypeError,
            "keep_TK must be a bool",
        ),
        (
            lambda: fn(X, EXPERT, GATE, PARAMS, torch.ones(6, 3, dtype=torch.bool)),
            ValueError,
            "keep_TK must have shape",
        ),
        (lambda: fn(X, EXPERT, GATE, PARAMS._replace(w3_EFD=None)), ValueError, "needs w3_EFD"),
        (
            lambda: fn(X, EXPERT, GATE, PARAMS._replace(w3_EFD=PARAMS.w3_EFD[:, :9])),
            ValueError,
            "w3_EFD must have shape",
        ),
        (
            lambda: fn(X, EXPERT, GATE, PARAMS._replace(w2_EDF=PARAMS.w1_EFD)),
            ValueError,
            "w2_EDF must have shape",
        ),
        (
            lambda: fn(X, EXPERT, GATE, PARAMS._replace(activation="tanh")),
            ValueError,
            "activation='tanh'",
        ),
        (lambda: fn(X, EXPERT, GATE, (PARAMS.w1_EFD, PARAMS.w2_EDF)), TypeError, "ExpertParams"),
    ]


def _triton_rows():
    try:
        import minimoe.triton as mt
    except ImportError:  # pragma: no cover
        return {}
    W = PARAMS.w1_EFD
    return {
        "triton_moe": experts_rows(mt.triton_moe),
        "fused_experts_v3": experts_rows(mt.fused_experts_v3)
        + [
            (
                lambda: mt.fused_experts_v3(X, EXPERT, GATE, PARAMS, out=torch.empty(6, 7)),
                ValueError,
                "out must be",
            )
        ],
        "grouped_gemm_v2": [
            (lambda: mt.grouped_gemm_v2(X, W, EXPERT + 1), ValueError, "expert ids must be in"),
            (lambda: mt.grouped_gemm_v2(X[:, :7], W, EXPERT), ValueError, "need x"),
            (
                lambda: mt.grouped_gemm_v2(X, W, EXPERT.float()),
                TypeError,
                "expert_TK must be int64",
            ),
            (
                lambda: mt.grouped_gemm_v2(X, W, EXPERT, config=(16, 16)),
                TypeError,
                "KernelConfig",
            ),
            (
                lambda: mt.grouped_gemm_v2(X.double(), W.double(), EXPERT),
                TypeError,
                "float32 or float16",
            ),
        ],
        "matmul_v1": [
            (lambda: mt.matmul_v1(X, X), ValueError, r"\(R, I\) @ \(I, O\)"),
            (lambda: mt.matmul_v1(X, X.t().double()), TypeError, "a and b differ"),
            (lambda: mt.matmul_v1(X, X.t(), block_m=24), ValueError, "power of two"),
        ],
        "align_block_size": [
            (
                lambda: mt.align_block_size(EXPERT, None, 4, 16),
                ValueError,
                "expert ids must be in",
            ),
            (
                lambda: mt.align_block_size(EXPERT, None, 5, 0),
                ValueError,
                "block_m must be a positive int",
            ),
            (
                lambda: mt.align_block_size(EXPERT, None, 5.0, 16),
                TypeError,
                "n_experts must be an int",
            ),
            (
                lambda: mt.align_block_size(EXPERT.float(), None, 5, 16),
                TypeError,
                "expert_TK must be int",
            ),
            (
                lambda: mt.align_block_size(EXPERT, torch.ones(6, 2), 5, 16),
                TypeError,
                "keep_TK must be a bool",
            ),
        ],
        "KernelConfig": [
            (lambda: mt.KernelConfig(block_m=24), ValueError, "block_m must be a power of two"),
            (lambda: mt.KernelConfig(num_warps=3), ValueError, "num_warps"),
            (lambda: mt.KernelConfig(group_size_m=0), ValueError, "group_size_m"),
        ],
        "default_config": [
            (lambda: mt.default_config("gpu0"), ValueError, "device='gpu0' is not a device"),
            (lambda: mt.default_config(0.5), TypeError, "device must be a torch.device"),
        ],
        "tuned_config": [
            (
                lambda: mt.tuned_config(8, 16, 16, 0, 1, "cuda"),
                ValueError,
                "E must be a positive int",
            ),
            (
                lambda: mt.tuned_config(8, 16, 16, 4, 5, "cuda"),
                ValueError,
                r"K must be an int in \[1, 4\]",
            ),
            (lambda: mt.tuned_config(8.0, 16, 16, 4, 2, "cpu"), TypeError, "T must be an int"),
        ],
    }


BAD_INPUTS = {
    "MoEConfig": [
        (cfg(top_k=0), ValueError, "top_k must be in"),
        (cfg(top_k=5), ValueError, r"top_k must be in \[1, n_experts=4\]"),
        (cfg(top_k=2.0), TypeError, "top_k must be an int"),
        (cfg(d_model=True), TypeError, "d_model must be an int"),
        (cfg(d_ff=12.5), TypeError, "d_ff must be an int"),
        (cfg(capacity_factor=math.inf), ValueError, "capacity_factor must be > 0 and finite"),
        (cfg(capacity_factor=math.nan), ValueError, "capacity_factor must be > 0"),
        (cfg(capacity_factor="1.0"), TypeError, "capacity_factor must be a real number"),
        (cfg(min_capacity=2.0), TypeError, "min_capacity must be an int"),
        (
            cfg(capacity_formula="switch", expert_capacity=2.5),
            TypeError,
            "expert_capacity must be an int",
        ),
        (cfg(capacity_formula="switch"), ValueError, "needs expert_capacity"),
        (cfg(group_size=4.0), TypeError, "group_size must be an int"),
        (cfg(group_size=-2), ValueError, "group_size must be a positive int"),
        (
            cfg(gating="deepseek_v3", routed_scaling_factor=-1.0),
            ValueError,
            "routed_scaling_factor must be > 0",
        ),
        (
            cfg(gating="deepseek_v3", routed_scaling_factor=math.nan),
            ValueError,
            "routed_scaling_factor",
        ),
        (cfg(seed=1.5), TypeError, "seed must be an int"),
        (cfg(jitter_eps=1.0), ValueError, r"jitter_eps must be in \[0, 1\)"),
        (cfg(jitter_scope="experts"), ValueError, "jitter_scope='experts' is not one of"),
        (cfg(noise="gaussian"), ValueError, "noise='gaussian' is not one of"),
        (cfg(second_expert_policy="random", top_k=1), ValueError, "needs top_k=2"),
        (cfg(second_expert_policy="sampling"), ValueError, "second_expert_policy='sampling'"),
        (cfg(norm_topk_prob=False), ValueError, "norm_topk_prob=False is the 'deepseek_v3'"),
        (cfg(gating="deepseek_v3", n_groups=3), ValueError, "n_groups=3 must divide n_experts=4"),
        (
            cfg(gating="deepseek_v3", n_groups=2, topk_groups=3),
            ValueError,
            "topk_groups must be an int in",
        ),
        (
            cfg(gating="deepseek_v3", n_groups=4, topk_groups=1),
            ValueError,
            "top_k exceeds the 1 experts",
        ),
        (cfg(renormalize_after_drop=1), TypeError, "renormalize_after_drop must be True or False"),
        (cfg(aux_loss="gshard"), ValueError, "aux_loss='gshard' is not one of"),
        (cfg(aux_loss_per_group=True), ValueError, "aux_loss_per_group=True .* needs"),
        (
            cfg(aux_loss_per_group=True, group_size=2, aux_loss="mixtral"),
            ValueError,
            "aux_loss='switch'",
        ),
    ],
    "route": [
        (lambda: route(LOGITS, 0), ValueError, "top_k must be in"),
        (lambda: route(LOGITS, 6), ValueError, r"top_k must be in \[1, n_experts=5\]"),
        (lambda: route(LOGITS, 2.0), TypeError, "top_k must be an int"),
        (lambda: route(LOGITS, 2, "topk"), ValueError, "gating='topk' is not one of"),
        (lambda: route(LOGITS[0], 2), ValueError, "logits_TE must be 2-D"),
        (lambda: route(LOGITS.long(), 2), TypeError, "logits_TE must be a floating"),
        (
            lambda: route(LOGITS, 2, "deepseek_v3", bias_E=torch.zeros(4)),
            ValueError,
            r"bias_E must have shape \(5,\)",
        ),
        (lambda: route(LOGITS, 2, "mixtral", bias_E=torch.zeros(5)), ValueError, "selection bias"),
        (
            lambda: route(LOGITS, 2, select_noise_TE=torch.zeros(6, 4)),
            ValueError,
            "select_noise_TE must have shape",
        ),
        (
            lambda: route(LOGITS, 2, "deepseek_v3", n_groups=2),
            ValueError,
            "n_groups=2 must divide n_experts=5",
        ),
        (
            lambda: route(LOGITS[:, :4], 3, "deepseek_v3", n_groups=2, topk_groups=1),
            ValueError,
            "top_k exceeds the 2 experts",
        ),
        (
            lambda: route(LOGITS[:, :4], 2, "deepseek_v3", n_groups=2, topk_groups=0),
            ValueError,
            "topk_groups must be an int in",
        ),
        (
            lambda: route(LOGITS[:, :4], 2, "deepseek_v3", n_groups=2, topk_groups=3),
            ValueError,
            "topk_groups must be an int in",
        ),
        (
            lambda: route(LOGITS, 2, "mixtral", n_groups=5, topk_groups=1),
            ValueError,
            "group-limited",
        ),
        (
            lambda: route(LOGITS, 2, "deepseek_v3", routed_scaling_factor=0.0),
            ValueError,
            "routed_scaling_factor must be > 0",
        ),
        (lambda: route(LOGITS, 2, clean_first_choice=True), ValueError, "needs select_noise_TE"),
        (
            lambda: route(LOGITS, 2, "switch", norm_topk_prob=False),
            ValueError,
            "norm_topk_prob=False",
        ),
    ],
    "assign_slots": [
        (lambda: assign_slots(EXPERT, GATE, 4, 2), ValueError, r"expert ids must be in \[0, 4\)"),
        (lambda: assign_slots(EXPERT - 1, GATE, 5, 2), ValueError, "expert ids must be in"),
        (lambda: assign_slots(EXPERT, GATE, 0, 2), ValueError, "n_experts must be a positive int"),
        (lambda: assign_slots(EXPERT, GATE, 5, 2.0), TypeError, "capacity must be an int"),
        (lambda: assign_slots(EXPERT, GATE, 5, 1.5), TypeError, "capacity must be an int"),
        (lambda: assign_slots(EXPERT, GATE, 5, -1), ValueError, "capacity must be an int >= 0"),
        (
            lambda: assign_slots(EXPERT, GATE, 5, 2, group_size=0),
            ValueError,
            "group_size must be a positive int",
        ),
        (lambda: assign_slots(EXPERT, GATE, 5, 2, group_size=-3), ValueError, "group_size"),
        (
            lambda: assign_slots(EXPERT, GATE, 5, 2, group_size=4),
            ValueError,
            "do not split into groups",
        ),
        (
            lambda: assign_slots(EXPERT, GATE, 5, 2, "fifo"),
            ValueError,
            "policy='fifo' is not one of",
        ),
        (lambda: assign_slots(EXPERT.float(), GATE, 5, 2), TypeError, "expert_TK must be int64"),
        (lambda: assign_slots(EXPERT, GATE[:, :1], 5, 2), ValueError, "gate_TK must have shape"),
        (lambda: assign_slots(EXPERT, GATE, 5, 2, "random", generator=0), TypeError, "generator"),
    ],
    "expert_capacity": [
        (
            lambda: expert_capacity(8, 4, 1, "deepspeed", math.inf),
            ValueError,
            "capacity_factor must be > 0 and finite",
        ),
        (lambda: expert_capacity(8, 4, 1, "deepspeed", 1e39), ValueError, "overflows float32"),
        (
            lambda: expert_capacity(8, 4, 1, "deepspeed", 0.0),
            ValueError,
            "capacity_factor must be > 0",
        ),
        (lambda: expert_capacity(8.0, 4, 1), TypeError, "n_tokens must be an int"),
        (lambda: expert_capacity(-1, 4, 1), ValueError, "n_tokens must be an int >= 0"),
        (lambda: expert_capacity(8, 0, 1), ValueError, "n_experts must be a positive int"),
        (lambda: expert_capacity(8, 4, 5), ValueError, r"top_k must be an int in \[1, 4\]"),
        (
            lambda: expert_capacity(8, 4, 1, "deepspeed", 1.0, 2.0),
            TypeError,
            "min_capacity must be an int",
        ),
        (
            lambda: expert_capacity(8, 4, 1, "switch", 1.0, 0, 2.5),
            TypeError,
            "fixed_capacity must be an int",
        ),
        (lambda: expert_capacity(8, 4, 1, "switch"), ValueError, "needs fixed_capacity"),
        (lambda: expert_capacity(8, 4, 1, "floor"), ValueError, "formula='floor' is not one of"),
    ],
    "load_balancing_loss": [
        (
            lambda: load_balancing_loss(PROBS, EXPERT + 1),
            ValueError,
            r"expert ids must be in \[0, 5\)",
        ),
        (lambda: load_balancing_loss(PROBS, EXPERT - 1), ValueError, "expert ids must be in"),
        (lambda: load_balancing_loss(PROBS[:5], EXPERT), ValueError, "must agree on T"),
        (
            lambda: load_balancing_loss(PROBS, EXPERT, mask_T=torch.ones(5, dtype=torch.bool)),
            ValueError,
            r"mask_T must have shape \(6,\)",
        ),
        (
            lambda: load_balancing_loss(PROBS, EXPERT, mask_T=torch.ones(6)),
            TypeError,
            "mask_T must be a bool",
        ),
        (lambda: load_balancing_loss(PROBS, EXPERT.float()), TypeError, "expert_TK must be int64"),
        (lambda: load_balancing_loss(PROBS[0], EXPERT), ValueError, "probs_TE must be 2-D"),
        (
            lambda: load_balancing_loss(PROBS, EXPERT, group_size=4),
            ValueError,
            "do not split into groups",
        ),
        (lambda: load_balancing_loss(PROBS, EXPERT, group_size=0), ValueError, "group_size"),
    ],
    "mixtral_load_balancing_loss": [
        (
            lambda: mixtral_load_balancing_loss(PROBS, EXPERT + 1),
            ValueError,
            "expert ids must be in",
        ),
        (
            lambda: mixtral_load_balancing_loss(PROBS, EXPERT - 1),
            ValueError,
            "expert ids must be in",
        ),
        (lambda: mixtral_load_balancing_loss(PROBS[:4], EXPERT), ValueError, "must agree on T"),
        (
            lambda: mixtral_load_balancing_loss(
                PROBS, EXPERT, mask_T=torch.ones(7, dtype=torch.bool)
            ),
            ValueError,
            "mask_T must have shape",
        ),
        (
            lambda: mixtral_load_balancing_loss(PROBS.long(), EXPERT),
            TypeError,
            "probs_TE must be a floating",
        ),
    ],
    "z_loss": [
        (lambda: z_loss(LOGITS[0]), ValueError, "logits_TE must be 2-D"),
        (lambda: z_loss(LOGITS.long()), TypeError, "logits_TE must be a floating"),
        (
            lambda: z_loss(LOGITS, mask_T=torch.ones(2, dtype=torch.bool)),
            ValueError,
            "mask_T must have shape",
        ),
    ],
    "routing_stats": [
        (lambda: routing_stats(EXPERT, 4), ValueError, "expert ids must be in"),
        (lambda: routing_stats(EXPERT, 0), ValueError, "n_experts must be a positive int"),
        (lambda: routing_stats(EXPERT.float(), 5), TypeError, "expert_TK must be int64"),
        (
            lambda: routing_stats(EXPERT, 5, keep_TK=torch.ones(6, 1, dtype=torch.bool)),
            ValueError,
            "keep_TK must have shape",
        ),
        (
            lambda: routing_stats(EXPERT, 5, probs_TE=PROBS[:, :4]),
            ValueError,
            "probs_TE must have shape",
        ),
    ],
    "renormalize_survivors": [
        (
            lambda: renormalize_survivors(GATE, torch.ones(6, 3, dtype=torch.bool)),
            ValueError,
            "keep_TK must have shape",
        ),
        (
            lambda: renormalize_survivors(GATE, torch.ones(6, 2)),
            TypeError,
            "keep_TK must be a bool",
        ),
        (
            lambda: renormalize_survivors(GATE.long(), GATE > 0),
            TypeError,
            "gate_TK must be a floating",
        ),
    ],
    "random_second_expert": [
        (lambda: random_second_expert(GATE), ValueError, "prob2_T must be 1-D"),
        (lambda: random_second_expert(EXPERT[:, 0]), TypeError, "prob2_T must be a floating"),
        (lambda: random_second_expert(GATE[:, 1], generator=1), TypeError, "generator"),
    ],
    "dispatch_combine_tensors": [
        (
            lambda: dispatch_combine_tensors(EXPERT, GATE, None, 4),
            ValueError,
            "expert ids must be in",
        ),
        (
            lambda: dispatch_combine_tensors(EXPERT, GATE, None, 5, 1.5),
            TypeError,
            "capacity must be an int",
        ),
        (
            lambda: dispatch_combine_tensors(EXPERT, GATE, None, 5, -1),
            ValueError,
            "capacity must be an int >= 0",
        ),
        (
            lambda: dispatch_combine_tensors(EXPERT, GATE[:, :1], None, 5),
            ValueError,
            "gate_TK must have shape",
        ),
        (
            lambda: dispatch_combine_tensors(EXPERT, GATE, torch.ones(6, 2), 5),
            TypeError,
            "keep_TK must be a bool",
        ),
        (
            lambda: dispatch_combine_tensors(EXPERT, GATE, None, 5, 2, position_TK=EXPERT[:, :1]),
            ValueError,
            "position_TK must have shape",
        ),
    ],
    "sort_slots": [
        (lambda: sort_slots(EXPERT, None, 4), ValueError, "expert ids must be in"),
        (lambda: sort_slots(EXPERT, None, 0), ValueError, "n_experts must be a positive int"),
        (lambda: sort_slots(EXPERT[:, 0], None, 5), ValueError, "expert_TK must be 2-D"),
        (lambda: sort_slots(EXPERT, torch.ones(6, 2), 5), TypeError, "keep_TK must be a bool"),
    ],
    "Router": [
        (lambda: Router(8, 4, noise="loud"), ValueError, "noise='loud' is not one of"),
        (lambda: Router(8.0, 4), TypeError, "d_model must be an int"),
        (lambda: Router(8, 4, jitter_eps=-0.1), ValueError, "jitter_eps must be in"),
        (lambda: Router(8, 4, jitter_scope="all"), ValueError, "jitter_scope='all'"),
        (lambda: Router(8, 4)(torch.randn(3, 7)), ValueError, "x_TD must have shape"),
        (
            lambda: Router(8, 4)(torch.ones(3, 8, dtype=torch.long)),
            TypeError,
            "x_TD must be a floating",
        ),
    ],
    "Experts": [
        (lambda: Experts(4, 8, 16, "tanh"), ValueError, "activation='tanh'"),
        (lambda: Experts(0, 8, 16), ValueError, "n_experts must be a positive int"),
        (lambda: Experts(4, 8, 16.0), TypeError, "d_ff must be an int"),
    ],
    "MoELayer": [
        (lambda: MoELayer(BASE), TypeError, "cfg must be a MoEConfig"),
        (
            lambda: MoELayer(MoEConfig(**BASE))(torch.randn(3, 7)),
            ValueError,
            "must end in d_model=8",
        ),
        (
            lambda: MoELayer(MoEConfig(**BASE))(torch.randn(3, 8).double()),
            TypeError,
            "layer is torch.float32",
        ),
        (
            lambda: MoELayer(MoEConfig(**BASE, group_size=4))(torch.randn(6, 8)),
            ValueError,
            "do not split into groups",
        ),
    ],
    "moe_cost": [
        (lambda: moe_cost("magic", T=4, D=8, F=8, E=4, K=2), ValueError, "impl='magic'"),
        (lambda: moe_cost("loop", T=4.0, D=8, F=8, E=4, K=2), TypeError, "T must be an int"),
        (
            lambda: moe_cost("loop", T=4, D=8, F=8, E=4, K=2, activation="tanh"),
            ValueError,
            "activation",
        ),
        (
            lambda: moe_cost("einsum", T=4, D=8, F=8, E=4, K=2, capacity=2.5),
            TypeError,
            "capacity must be an int",
        ),
    ],
    "count_moe_params": [
        (lambda: count_moe_params(BASE), TypeError, "cfg must be a MoEConfig"),
    ],
    "count_decoder_params": [
        (
            lambda: count_decoder_params(
                vocab_size=10,
                hidden_size=8.0,
                n_layers=1,
                n_heads=2,
                n_kv_heads=1,
                intermediate_size=8,
                n_experts=4,
                top_k=2,
            ),
            TypeError,
            "hidden_size must be an int",
        ),
        (
            lambda: count_decoder_params(
                vocab_size=10,
                hidden_size=8,
                n_layers=1,
                n_heads=2,
                n_kv_heads=1,
                intermediate_size=8,
                n_experts=4,
                top_k=2,
                activation="tanh",
            ),
            ValueError,
            "activation",
        ),
    ],
    "ffn": [
        (
            lambda: ffn(X, PARAMS.w1_EFD[0], PARAMS.w2_EDF[0], None, "tanh"),
            ValueError,
            "activation='tanh'",
        ),
    ],
    "expert_ffn": [
        (lambda: expert_ffn(X, PARAMS, 5), ValueError, r"expert e must be an int in \[0, 4\]"),
        (lambda: expert_ffn(X, PARAMS, 1.0), TypeError, "expert e must be an int"),
    ],
    "grouped_mm_path": [
        (lambda: minimoe.grouped_mm_path(X[0], PARAMS), ValueError, "x_TD must be 2-D"),
        (lambda: minimoe.grouped_mm_path(X, (PARAMS.w1_EFD,)), TypeError, "ExpertParams"),
        (lambda: minimoe.grouped_mm_path(X.long(), PARAMS), TypeError, "x_TD must be a floating"),
    ],
    "reference_moe": experts_rows(reference_moe),
    "loop_moe": experts_rows(loop_moe),
    "einsum_moe": experts_rows(einsum_moe),
    "padded_bmm_moe": experts_rows(padded_bmm_moe),
    "grouped_mm_moe": experts_rows(grouped_mm_moe),
    **_triton_rows(),
}
ROWS = [(entry, i, *row) for entry, rows in BAD_INPUTS.items() for i, row in enumerate(rows)]

# names of minimoe.__all__ that take no input to check: types, protocols and dataclasses whose
# fields are filled by the library, and a lookup with no bad input (any x and params are valid)
NO_ARGUMENTS = {"ExpertParams", "ExpertsFn", "MoECost", "MoEResult", "Routing", "RoutingStats"}
NO_BAD_INPUT: set[str] = set()


@pytest.mark.parametrize("entry,i,call,error,message", ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_bad_input(entry, i, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_every_public_entry_is_tried() -> None:
    untried = set(minimoe.__all__) - set(BAD_INPUTS) - NO_ARGUMENTS - NO_BAD_INPUT
    assert not untried, f"public entries with no bad input tried: {sorted(untried)}"
    mt = pytest.importorskip("minimoe.triton")
    # TRITON_NEEDS is a message, AlignedSlots a result type, available_configs takes nothing
    untried = set(mt.__all__) - set(BAD_INPUTS) - {"TRITON_NEEDS", "AlignedSlots", "available_configs"}  # fmt: skip
    assert not untried, f"minimoe.triton entries with no bad input tried: {sorted(untried)}"


def bad_input_counts() -> dict[str, int]:
    """Bad inputs tried per public entry (the table of the reference documentation)."""
    return {entry: len(rows) for entry, rows in BAD_INPUTS.items()}


# ----------------------------------------------------------------------------------------------
# edges that must work
# ----------------------------------------------------------------------------------------------


def _all_impls():
    impls = [reference_moe, loop_moe, einsum_moe, padded_bmm_moe, grouped_mm_moe]
    try:
        import minimoe.triton as mt

        impls.append(mt.triton_moe)
    except ImportError:  # pragma: no cover
        pass
    return impls


@pytest.mark.parametrize("fn", _all_impls(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", ["T0", "all_dropped"])
def test_no_kept_slot_keeps_an_autograd_graph(fn, case: str) -> None:
    """y.sum().backward() works and gives zero gradients to every input, in every impl."""
    T = 0 if case == "T0" else 3
    x, expert, gate, p = make_experts_inputs(T, 16, 16, 3, 2, torch.float32, "swiglu", "topk", 4)
    leaves = [x, gate, p.w1_EFD, p.w2_EDF, p.w3_EFD]
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    keep = torch.zeros(T, 2, dtype=torch.bool)
    y = fn(leaves[0], expert, leaves[1], ExpertParams(*leaves[2:], "swiglu"), keep)
    assert y.shape == (T, 16) and y.requires_grad
    assert torch.count_nonzero(y) == 0
    y.sum().backward()
    for t in leaves:
        assert t.grad is not None and torch.count_nonzero(t.grad) == 0


def test_huge_capacity_drops_nothing() -> None:
    """cf = 1e30 is a valid (huge) C: nothing dropped, no overflow."""
    C = expert_capacity(6, 5, 2, "megatron", 1e30)
    assert C > 10**29
    keep, pos = assign_slots(EXPERT, GATE, 5, C)
    assert keep.all() and (pos >= 0).all()
    C = expert_capacity(6, 5, 2, "deepspeed", 1e30)
    assert assign_slots(EXPERT, GATE, 5, C)[0].all()


def test_group_size_no_longer_spills_into_the_next_group() -> None:
    """An id >= E used to land in the next group's bucket and drop valid slots there."""
    expert = torch.tensor([[0], [1], [0], [1]])
    bad = expert.clone()
    bad[1, 0] = 2  # with E = 2, group 0's bucket 2 is group 1's expert 0
    with pytest.raises(ValueError, match="expert ids"):
        assign_slots(bad, torch.ones(4, 1), 2, 1, group_size=2)
    keep, _ = assign_slots(expert, torch.ones(4, 1), 2, 1, group_size=2)
    assert keep.all()


def test_layer_forward_makes_one_validation_sync(monkeypatch) -> None:
    """The id-range check (torch.aminmax + one transfer) runs once per forward pass: in the
    experts step; routing, capacity, losses and statistics use the ids `route` made."""
    calls = []
    real = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    for changes in [{}, dict(capacity_formula="deepspeed", capacity_factor=1.0), dict(aux_loss="mixtral")]:  # fmt: skip
        calls.clear()
        layer = MoELayer(MoEConfig(**BASE, **changes), experts_fn=einsum_moe)
        layer(torch.randn(2, 5, 8))
        assert len(calls) == 1, f"{changes}: {len(calls)} range checks"
