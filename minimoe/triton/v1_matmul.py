"""Version 1 of the ladder: one expert's tiled matmul, C = A @ B.

This is the Triton matmul tutorial's kernel, explained for our case. Running E experts this way
takes E launches, and a gather of each expert's rows into a contiguous buffer first: version 2
(`v2_grouped_gemm.py`) does all experts in one launch and gathers the rows itself.

    python -m minimoe.triton 1           # or python -m minimoe.triton.v1_matmul
    TRITON_INTERPRET=1 python -m minimoe.triton 1     # on a CPU, in Triton's interpreter

checks `matmul_v1(x, w1[0].t())` against the float64 product, then times it.
"""

from __future__ import annotations

import torch

from minimoe.triton.common import (
    check_dtype,
    ladder_inputs,
    launch_options,
    output_buffer,
    precision,
    require_triton,
    tile_ids,
    tl,
    triton,
    validate_then_time,
)
from minimoe.triton.config import KernelConfig


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr,  # A (M, K), B (K, N), C (M, N): one expert's rows, weights, outputs
    M, N, K,  # the matrix sizes (any values: tiles past an edge are masked)
    stride_am, stride_ak,  # element steps of A along M and K
    stride_bk, stride_bn,  # ... of B along K and N (a transposed view costs nothing)
    stride_cm, stride_cn,  # ... of C along M and N
    PRECISION: tl.constexpr,  # "ieee" for exact float32 products, "tf32" to allow TF32
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # the tile
    GROUP_SIZE_M: tl.constexpr,  # row blocks per group of the grouped order
):  # fmt: skip
    """Version 1: C[m, n] = sum_k A[m, k] B[k, n], one BLOCK_M x BLOCK_N tile per program.

    Traffic per program: BLOCK_M * K elements of A and K * BLOCK_N of B, for 2 * BLOCK_M *
    BLOCK_N * K FLOPs; larger tiles do more work per byte loaded.
    """
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N),
                            GROUP_SIZE_M)  # fmt: skip
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        # masks: rows past M, columns past N and the ragged last K step read zeros
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] + k0 < K), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] + k0 < K) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(
        c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N)
    )


def matmul_v1(
    a_RI: torch.Tensor,
    b_IO: torch.Tensor,
    *,
    block_m: int = 32,
    block_n: int = 32,
    block_k: int = 32,
    group_size_m: int = 8,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Version 1: one expert's matmul, a_RI @ b_IO, as a grid of BLOCK_M x BLOCK_N tiles.

    The kernel's M, N, K are the Triton tutorial's names for rows, columns and the reduction:
    here M = R (the expert's rows), N = O (output features), K = I (input features).

    Args:
        a_RI: (R, I) rows (float32/float16; bfloat16 on a GPU).
        b_IO: (I, O) in a's dtype and device (a transposed view, such as w.t(), is fine).
        block_m, block_n, block_k: the tile, powers of two >= 16.
        group_size_m: row blocks per group of the grouped program order.
        out: optional (R, O) output in a's dtype; a new tensor when None.

    Returns:
        c_RO in a's dtype.
    """
    if a_RI.dim() != 2 or b_IO.dim() != 2 or a_RI.shape[1] != b_IO.shape[0]:
        raise ValueError(f"need (R, I) @ (I, O), got {tuple(a_RI.shape)} @ {tuple(b_IO.shape)}")
    if a_RI.dtype != b_IO.dtype or a_RI.device != b_IO.device:
        raise TypeError(f"a and b differ: {a_RI.dtype}/{a_RI.device} vs {b_IO.dtype}/{b_IO.device}")
    cfg = KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, group_size_m=group_size_m)
    check_dtype(a_RI.dtype, a_RI.device)
    require_triton(a_RI.device)
    R, O = a_RI.shape[0], b_IO.shape[1]
    c = output_buffer(out, (R, O), a_RI)
    if R and O:
        grid = (triton.cdiv(R, block_m) * triton.cdiv(O, block_n),)
        matmul_kernel[grid](
            a_RI, b_IO, c, R, O, a_RI.shape[1],
            a_RI.stride(0), a_RI.stride(1), b_IO.stride(0), b_IO.stride(1), c.stride(0), c.stride(1),
            PRECISION=precision(a_RI.dtype), GROUP_SIZE_M=group_size_m, **launch_options(cfg),
        )  # fmt: skip
    return c


def main(argv: list[str] | None = None) -> int:
    """Check version 1 on expert 0's first projection against the float64 product, then time it."""
    args, (x, _, _, params) = ladder_inputs(1, argv)
    w_FD = params.w1_EFD[0]
    return validate_then_time(
        1, args, lambda: [matmul_v1(x, w_FD.t())], [x.double() @ w_FD.double().t()]
    )


if __name__ == "__main__":
    raise SystemExit(main())
