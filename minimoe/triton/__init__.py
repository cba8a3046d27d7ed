"""minimoe.triton: the experts step as Triton kernels (chapter 06), forward and backward.

    from minimoe.triton import triton_moe          # same signature as minimoe.reference_moe
    layer = MoELayer(cfg, experts_fn=triton_moe)   # trains on a CUDA GPU

The ladder, one rung per file, each with its kernel, its launcher and a `__main__` that checks it
against the float64 oracle and then times it (`python -m minimoe.triton 1|2|3|4`):

    v1_matmul.py         `matmul_v1`: one expert's tiled matmul (the Triton tutorial's kernel)
    v2_grouped_gemm.py   `grouped_gemm_v2`: all experts in one launch, the gather fused into the
                         tile load; `align_block_size`, the padded index lists it reads
    v3_fused_experts.py  `fused_experts_v3`: the FFN fused (activation in the first GEMM's
                         epilogue, gate and scatter in the second's)
    v4_backward.py       `triton_moe`: version 3 with its backward kernels, for training
    common.py            what the rungs share: Triton or a clear error, the grouped program
                         order, the launchers' checks, the validate-then-time command
    config.py            `KernelConfig` (tile sizes), the default and the tuned tables

`kernels` is every kernel of the ladder in one namespace, to read their source
(`inspect.getsource(kernels.fused_up_kernel.fn)`).

Runs on a CUDA GPU (float32, float16, bfloat16), or on the CPU through Triton's interpreter
(float32, float16, tiny shapes) when TRITON_INTERPRET=1 is in the environment before a rung is
first imported (its kernels are defined then). Importing this package imports no rung and
neither Triton: a name is loaded on first use, and a machine without Triton gets a clear error
when a kernel is launched.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

# public name -> the module of the ladder that defines it
_HOME = {
    "TRITON_NEEDS": "common",
    "KernelConfig": "config",
    "available_configs": "config",
    "default_config": "config",
    "tuned_config": "config",
    "matmul_v1": "v1_matmul",
    "AlignedSlots": "v2_grouped_gemm",
    "align_block_size": "v2_grouped_gemm",
    "grouped_gemm_v2": "v2_grouped_gemm",
    "fused_experts_v3": "v3_fused_experts",
    "triton_moe": "v4_backward",
}
_KERNELS = {
    "tile_ids": "common",
    "matmul_kernel": "v1_matmul",
    "grouped_gemm_kernel": "v2_grouped_gemm",
    "fused_up_kernel": "v3_fused_experts",
    "act_grad_kernel": "v4_backward",
    "expert_grad_kernel": "v4_backward",
}

__all__ = [
    "TRITON_NEEDS",
    "AlignedSlots",
    "KernelConfig",
    "align_block_size",
    "available_configs",
    "default_config",
    "fused_experts_v3",
    "grouped_gemm_v2",
    "matmul_v1",
    "triton_moe",
    "tuned_config",
]


def _load(name: str, module: str):
    return getattr(importlib.import_module(f"minimoe.triton.{module}"), name)


def __getattr__(name: str):
    if name in _HOME:
        return _load(name, _HOME[name])
    if name == "kernels":
        return SimpleNamespace(**{k: _load(k, m) for k, m in _KERNELS.items()})
    raise AttributeError(f"module 'minimoe.triton' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME, "kernels"])
