"""minimoe.triton: the experts step as Triton kernels (chapter 06), forward and backward.

    from minimoe.triton import triton_moe          # same signature as minimoe.reference_moe
    layer = MoELayer(cfg, experts_fn=triton_moe)   # trains on a CUDA GPU

The version ladder (see `kernels.py`): `matmul_v1` (one expert's tiled matmul),
`grouped_gemm_v2` (all experts in one launch, the gather fused into the tile load),
`fused_experts_v3` (the FFN fused: activation in the first GEMM's epilogue, gate and scatter in
the second's), and `triton_moe` (version 3 with its backward, for training). `align_block_size`
builds the padded index lists the grouped kernels read; `KernelConfig` holds their tile sizes.

Runs on a CUDA GPU (float32, float16, bfloat16), or on the CPU through Triton's interpreter
(float32, float16, tiny shapes) when TRITON_INTERPRET=1 is in the environment before the first
call (the kernels are defined then). Importing this package needs neither Triton nor Linux: the
kernels load on first use, and a machine without them gets a clear error then.
"""

from minimoe.triton.align import AlignedSlots, align_block_size
from minimoe.triton.autograd import triton_moe
from minimoe.triton.config import KernelConfig, available_configs, default_config, tuned_config
from minimoe.triton.ops import TRITON_NEEDS, fused_experts_v3, grouped_gemm_v2, matmul_v1

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
