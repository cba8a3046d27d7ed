"""The known wrong answers to exercises 06.1 and 06.2, as Triton kernels, with the right ones.

The checks run these beside the learner's kernel on the same guarded inputs: when the learner's
output (and out-of-bounds accesses) equal a wrong variant's, the check names that mistake. They
are plain functions written in `triton.language`; `minimoe.course.checks.ch06_memory.jit_like` turns
them into kernels of the learner's kind (interpreted on a CPU, compiled on a GPU).

06.1, `out = a * x + y` (the Triton tutorial's vector add, with a scale):
  right; no mask; program offset missing (every program takes the first block); scale on y.
06.2, one tile C[m-block, n-block] = A @ B per program (the Triton matmul tutorial's loop,
without the grouped ordering):
  right; no K mask; no store mask; B's strides swapped; K pointers not advanced.
"""

from __future__ import annotations

try:  # the annotations below are strings, so this module imports without triton
    import triton.language as tl
except ImportError:  # pragma: no cover - a platform without triton
    tl = None


# --- 06.1 scaled add -------------------------------------------------------------------------


def scaled_add(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, a * x + y, mask=mask)


def scaled_add_no_mask(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    tl.store(out_ptr + offsets, a * tl.load(x_ptr + offsets) + tl.load(y_ptr + offsets))


def scaled_add_no_offset(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.arange(0, BLOCK_SIZE)  # pid * BLOCK_SIZE missing
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, a * x + y, mask=mask)


def scaled_add_scale_y(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + a * y, mask=mask)


# --- 06.2 one matmul tile --------------------------------------------------------------------


def _tile(a_ptr, b_ptr, c_ptr, M, N, K,
          stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
          BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
          K_MASK: tl.constexpr, STORE_MASK: tl.constexpr, SWAP_B: tl.constexpr,
          ADVANCE: tl.constexpr):  # fmt: skip
    """The right tile (all flags on, SWAP_B off) and its wrong variants (one flag flipped)."""
    offs_m = tl.program_id(0) * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    if SWAP_B:
        b_ptrs = b_ptr + offs_k[:, None] * stride_bn + offs_n[None, :] * stride_bk
    else:
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        if K_MASK:
            k_left = K - k * BLOCK_SIZE_K
            a_mask = (offs_m[:, None] < M) & (offs_k[None, :] < k_left)
            b_mask = (offs_k[:, None] < k_left) & (offs_n[None, :] < N)
        else:
            a_mask = (offs_m[:, None] < M) & (offs_k[None, :] < BLOCK_SIZE_K)
            b_mask = (offs_k[:, None] < BLOCK_SIZE_K) & (offs_n[None, :] < N)
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
        if ADVANCE:
            a_ptrs += BLOCK_SIZE_K * stride_ak
            if SWAP_B:
                b_ptrs += BLOCK_SIZE_K * stride_bn
            else:
                b_ptrs += BLOCK_SIZE_K * stride_bk
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if STORE_MASK:
        tl.store(c_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    else:
        tl.store(c_ptrs, acc)


TILE_RIGHT = dict(K_MASK=True, STORE_MASK=True, SWAP_B=False, ADVANCE=True)

# (the hint, the flags that make the mistake)
TILE_VARIANTS = (
    (
        "missing K mask: K is not a multiple of BLOCK_SIZE_K, so the last K block runs past "
        "column K of A and row K of B. Mask both loads with offs_k < K - k * BLOCK_SIZE_K and "
        "other=0.0, so the missing terms add 0",
        dict(TILE_RIGHT, K_MASK=False),
    ),
    (
        "missing store mask: the edge tiles run past row M or column N of C. Store with "
        "mask=(offs_m[:, None] < M) & (offs_n[None, :] < N)",
        dict(TILE_RIGHT, STORE_MASK=False),
    ),
    (
        "B's strides are swapped: element B[k, n] is at b_ptr + k * stride_bk + n * stride_bn "
        "(you used stride_bn for k and stride_bk for n, which reads B transposed)",
        dict(TILE_RIGHT, SWAP_B=True),
    ),
    (
        "the K pointers are never advanced: every iteration read the first K block again. After "
        "each K block add BLOCK_SIZE_K * stride_ak to the A pointers and BLOCK_SIZE_K * stride_bk "
        "to the B pointers (or start offs_k at k * BLOCK_SIZE_K)",
        dict(TILE_RIGHT, ADVANCE=False),
    ),
)
