"""The experts implementations by name: the one registry that the layer's users, the language
model, the benchmark, the cost model and the tests all read.

    from minimoe.impls import IMPLEMENTATIONS, get_impl
    layer = MoELayer(cfg, experts_fn=get_impl("grouped_mm").fn)

Every entry is a function with the signature of `minimoe.reference_moe` (see `minimoe.experts`),
tested against that float64 oracle, outputs and gradients, through this table
(tests/impls/test_impls.py). The facts beside each function are what the other users need to know
without importing it:

| name       | dropless | needs                    | cost model | what                                  |
|------------|----------|--------------------------|------------|---------------------------------------|
| reference  | yes      |                          | loop       | per-token, per-k loop in float64      |
| loop       | yes      |                          | loop       | a Python loop over experts            |
| einsum     | no       |                          | einsum     | one-hot (T, E, C) dispatch (GShard)   |
| padded_bmm | no       |                          | padded_bmm | sort, zero-padded (E, C, D) bmm       |
| grouped_mm | yes      |                          | grouped_mm | sort, grouped matmul over sorted rows |
| triton     | yes      | triton; a GPU for speed  | grouped_mm | minimoe.triton.triton_moe             |

"dropless" means the implementation multiplies only the slots it keeps: an implementation that
is not dropless pads every expert to one common capacity (its memory and FLOPs grow with the
largest load), though it still gives the oracle's answer. The cost model is the name of the
`minimoe.moe_cost` model that predicts its FLOPs and bytes.

Triton is optional: its entry imports `minimoe.triton` on its first call, so reading this table
never needs Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minimoe.einsum import einsum_moe
from minimoe.experts import ExpertParams, ExpertsFn
from minimoe.loop import loop_moe
from minimoe.reference import reference_moe
from minimoe.sorted import grouped_mm_moe, padded_bmm_moe

__all__ = ["IMPLEMENTATIONS", "Implementation", "get_impl", "triton_experts"]


def triton_experts(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """`minimoe.triton.triton_moe`, imported on first use: Triton is optional, and needs a CUDA GPU
    (or, on a CPU, TRITON_INTERPRET=1 set before the kernels are first imported: correct, but
    only for tiny shapes)."""
    from minimoe.triton import triton_moe

    return triton_moe(x_TD, expert_TK, gate_TK, params, keep_TK)


@dataclass(frozen=True)
class Implementation:
    """One experts implementation and the facts its users need.

    Attributes:
        name: its key in `IMPLEMENTATIONS`.
        fn: the function, with the signature of `minimoe.reference_moe`.
        dropless: True if it multiplies only the kept slots (no padding to a capacity).
        needs: what it needs beyond torch ("" for nothing; "triton" for the Triton kernels).
        cpu_speed: True if it is meant to run at full size on a CPU (Triton's interpreter is
            for tiny shapes only, and the float64 oracle is slow by design).
        cost_model: the `minimoe.moe_cost` model of its FLOPs and bytes.
        summary: one line for tables and command-line help.
    """

    name: str
    fn: ExpertsFn
    dropless: bool
    needs: str
    cpu_speed: bool
    cost_model: str
    summary: str


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in [
        Implementation(
            "reference", reference_moe, True, "", False, "loop",
            "the float64 oracle: a loop over tokens and their K choices",
        ),
        Implementation(
            "loop", loop_moe, True, "", True, "loop", "a Python loop over experts"
        ),
        Implementation(
            "einsum", einsum_moe, False, "", True, "einsum",
            "one-hot (T, E, C) dispatch and combine tensors (GShard, DeepSpeed)",
        ),
        Implementation(
            "padded_bmm", padded_bmm_moe, False, "", True, "padded_bmm",
            "sort by expert, then a zero-padded (E, C, D) batched matmul",
        ),
        Implementation(
            "grouped_mm", grouped_mm_moe, True, "", True, "grouped_mm",
            "sort by expert, then a grouped matmul over the sorted rows (Megablocks)",
        ),
        Implementation(
            "triton", triton_experts, True, "triton", False, "grouped_mm",
            "Triton kernels: a grouped GEMM with the gather and the scatter fused",
        ),
    ]
}  # fmt: skip


def get_impl(name: str) -> Implementation:
    """The registry entry called `name`, with a clear error listing the names there are."""
    if not isinstance(name, str) or name not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown experts implementation {name!r}: choose one of {sorted(IMPLEMENTATIONS)}"
        )
    return IMPLEMENTATIONS[name]
