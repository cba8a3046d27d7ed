"""The forward Triton kernels of the experts step, as a ladder of versions (llm.c style).

    version 1  matmul_kernel: one expert's tiled matmul, C = A @ B (the Triton matmul tutorial's
               kernel, explained for our case). Running the E experts this way takes E launches
               and a gather of each expert's rows into a contiguous buffer first.
               run:  python -m minimoe.triton 1        (`matmul_v1(a_MK, b_KN)`)
    version 2  grouped_gemm_kernel: ONE launch for all experts. The slots are sorted by expert
               and padded per expert to BLOCK_M (`align.py`); each program computes one tile of
               one expert, and gathers its input rows itself: it loads integer row ids, then
               x_ptr + row * stride. No gathered copy of x is ever written.
               run:  python -m minimoe.triton 2        (`grouped_gemm_v2(x_TD, w1_EFD, expert_TK)`)
    version 3  fused_up_kernel + grouped_gemm_kernel: the expert FFN end to end in two launches.
               The first GEMM computes x @ w1^T (and x @ w3^T for SwiGLU, a second accumulator
               over the same loaded x tile) and applies the activation in its epilogue, so
               the (N, F) pre-activations never travel through memory; the second GEMM
               multiplies each row by its gate and stores it at its slot t*K + k of a (T, K, D)
               buffer. The sum over K is then a plain sum over a fixed axis: deterministic, no
               atomics (vLLM's fused_moe adds the K rows the same way, `moe_sum`).
               run:  python -m minimoe.triton 3        (`fused_experts_v3(x_TD, expert_TK, gate_TK, params)`)
    version 4  the backward (`backward_kernels.py`) and `triton_moe`, which trains.
               run:  python -m minimoe.triton 4        (forward + backward)

Each command checks its version against the float64 oracle and times it; on a CPU prefix it with
TRITON_INTERPRET=1, and on a GPU add --T 4096 --D 2048 --F 768 --E 128 --K 8 --dtype bfloat16.

Every version runs on a CUDA GPU, or on the CPU through Triton's interpreter when the
environment has TRITON_INTERPRET=1 *before this module is imported* (`triton.jit` reads it when
a kernel is defined). The backward kernels are in `backward_kernels.py`; the Python launchers,
which pick the grid and check the inputs, in `ops.py`.

Names follow the Triton tutorials: `*_ptr` for pointers, `stride_xy` for the step in elements
along axis y of tensor x, BLOCK_SIZE-like constants in capitals (constexpr: fixed at compile
time, one compiled kernel per value). Each program computes a BLOCK_M x BLOCK_N tile of output
and accumulates in float32 whatever the input dtype.

Left out: tensor-memory-accelerator loads, persistent kernels, split-K, FP8/INT8 weights
(vLLM's and SGLang's kernels have them).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_ids(pid, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """The (row block, column block) of program `pid`, in grouped order.

    Row-major order would sweep all column blocks of row block 0, then of row block 1, ...: each
    column block of the weights is reloaded for every row block. Grouped order visits
    GROUP_SIZE_M row blocks down one column block before moving right, so a weight tile is read
    from DRAM once and then served from L2 to the next GROUP_SIZE_M - 1 programs.
    """
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)  # the last group may be short
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


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


@triton.jit
def grouped_gemm_kernel(
    a_ptr,  # (rows, I): the input rows; slot s reads row s // A_ROW_DIV
    w_ptr,  # (E, O, I) through strides: expert e's matrix, applied as a @ w[e]^T
    out_ptr,  # (N, O): the output row of slot s is row s
    scale_ptr,  # (N,): a multiplier per slot (the gate), read when HAS_SCALE
    a2_ptr, w2_ptr,  # a second (input, weight) pair, added when HAS_SECOND
    sorted_ids_ptr,  # (P,) int32: slot ids sorted by expert, padded per expert with N
    expert_ids_ptr,  # (P / BLOCK_M,) int32: the expert of each block of BLOCK_M sorted rows
    n_padded_ptr,  # (1,) int32: sorted rows in use; the blocks past it exit at once
    N, O, I, P,  # slots (T*K, also the pad sentinel), output and input features, padded rows
    stride_am, stride_ai,  # element steps of a (and a2) along rows and I
    stride_we, stride_wo, stride_wi,  # ... of w along E, O and I
    stride_a2m, stride_a2i,  # ... of a2 (its own: any layout)
    stride_w2e, stride_w2o, stride_w2i,  # ... of w2 (its own: w3 need not share w1's layout)
    stride_om, stride_oo,  # ... of out along slots and O
    A_ROW_DIV: tl.constexpr,  # K when a is x (T rows: slot t*K + k reads row t), 1 when a has N rows
    HAS_SCALE: tl.constexpr, HAS_SECOND: tl.constexpr,  # optional epilogue scale, second product
    PRECISION: tl.constexpr,  # "ieee" or "tf32" (float32 inputs only)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """Version 2: out[s] = scale[s] * (a[s // A_ROW_DIV] @ w[e(s)]^T  (+ a2[..] @ w2[e(s)]^T)).

    One program = one block of BLOCK_M sorted rows (all of one expert, by construction of the
    padded lists) x one block of BLOCK_N output columns. The gather of the input rows is fused
    into the A-tile load: the program loads BLOCK_M slot ids, turns them into row ids, and
    adds row * stride to the base pointer, so x is read in place and no gathered copy of it is
    written. A padded row holds the sentinel N: it is masked on load (reads zeros) and on
    store (writes nothing). The same kernel is the second GEMM of version 3 (HAS_SCALE: the
    gate) and the input gradient of the backward (HAS_SECOND: dG @ w1 + dU @ w3 for SwiGLU).
    """
    num_pid_m = P // BLOCK_M
    pid_m, pid_n = tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(O, BLOCK_N), GROUP_SIZE_M)
    if pid_m * BLOCK_M >= tl.load(n_padded_ptr):
        return  # a block past the rows in use (the lists are sized for the worst routing)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ids_ptr + offs_m).to(tl.int64)  # (BLOCK_M,) slot ids, or N for padding
    valid = slot < N
    row = slot // A_ROW_DIV  # the row of a that each sorted row reads: the fused gather
    e = tl.load(expert_ids_ptr + pid_m).to(tl.int64)  # one expert for the whole block
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_i = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + row[:, None] * stride_am + offs_i[None, :] * stride_ai
    w_ptrs = w_ptr + e * stride_we + offs_i[:, None] * stride_wi + offs_o[None, :] * stride_wo
    a2_ptrs = a2_ptr + row[:, None] * stride_a2m + offs_i[None, :] * stride_a2i
    w2_ptrs = w2_ptr + e * stride_w2e + offs_i[:, None] * stride_w2i + offs_o[None, :] * stride_w2o
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i0 in range(0, I, BLOCK_K):
        a_mask = valid[:, None] & (offs_i[None, :] + i0 < I)
        w_mask = (offs_i[:, None] + i0 < I) & (offs_o[None, :] < O)
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)  # (BLOCK_K, BLOCK_N): w[e]^T's tile
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if HAS_SECOND:
            a2 = tl.load(a2_ptrs, mask=a_mask, other=0.0)
            w2 = tl.load(w2_ptrs, mask=w_mask, other=0.0)
            acc = tl.dot(a2, w2, acc, input_precision=PRECISION)
            a2_ptrs += BLOCK_K * stride_a2i
            w2_ptrs += BLOCK_K * stride_w2i
        a_ptrs += BLOCK_K * stride_ai
        w_ptrs += BLOCK_K * stride_wi
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + slot, mask=valid, other=0.0).to(tl.float32)[:, None]
    # the scatter is fused into the store: each row goes straight to its slot's row of out
    out_ptrs = out_ptr + slot[:, None] * stride_om + offs_o[None, :] * stride_oo
    tl.store(
        out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (offs_o[None, :] < O)
    )


@triton.jit
def fused_up_kernel(
    x_ptr,  # (T, D): the tokens, read in place (slot t*K + k reads row t)
    w1_ptr, w3_ptr,  # (E, F, D): gate and up projections (w3 read only when ACTIVATION="swiglu")
    h_ptr,  # (N, F) output: the activation, row per slot
    g_ptr, u_ptr,  # (N, F) outputs when SAVE_PREACT: x @ w1^T and x @ w3^T, for the backward
    sorted_ids_ptr, expert_ids_ptr, n_padded_ptr,  # the padded index lists, as in version 2
    N, F, D, P, K,  # slots, hidden size, model size, padded rows, experts per token
    stride_xt, stride_xd,  # element steps of x
    stride_we, stride_wf, stride_wd,  # ... of w1
    stride_w3e, stride_w3f, stride_w3d,  # ... of w3: its own, it may be laid out differently
    stride_hn, stride_hf,  # ... of h, g and u
    ACTIVATION: tl.constexpr,  # "swiglu": silu(x w1^T) * (x w3^T); "gelu"/"relu": act(x w1^T)
    SAVE_PREACT: tl.constexpr,  # also store the pre-activations (training)
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """Version 3, first GEMM: h[s] = act(x[s // K] @ w1[e]^T (, x[s // K] @ w3[e]^T)).

    This is where fusion pays. Unfused, the gate and up projections write two (N, F) tensors,
    and the activation reads both back and writes a third: 5*N*F element transfers besides the
    matmuls. Here both products are accumulated side by side over the SAME loaded x tile (x is
    read once for the two), and the activation is applied to the accumulators while they are
    still in registers: only h is written (N*F), plus g and u when training needs them.
    GELU is the exact one, 0.5 g (1 + erf(g / sqrt 2)), as torch's default; ReLU is max(g, 0).
    w1 and w3 are read through their own strides: they need not share a memory layout.
    """
    num_pid_m = P // BLOCK_M
    pid_m, pid_n = tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(F, BLOCK_N), GROUP_SIZE_M)
    if pid_m * BLOCK_M >= tl.load(n_padded_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ids_ptr + offs_m).to(tl.int64)
    valid = slot < N
    token = slot // K
    e = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + token[:, None] * stride_xt + offs_d[None, :] * stride_xd
    w1_ptrs = w1_ptr + e * stride_we + offs_d[:, None] * stride_wd + offs_f[None, :] * stride_wf
    w3_ptrs = w3_ptr + e * stride_w3e + offs_d[:, None] * stride_w3d + offs_f[None, :] * stride_w3f
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        x = tl.load(x_ptrs, mask=valid[:, None] & (offs_d[None, :] + d0 < D), other=0.0)
        w_mask = (offs_d[:, None] + d0 < D) & (offs_f[None, :] < F)
        acc_g = tl.dot(
            x, tl.load(w1_ptrs, mask=w_mask, other=0.0), acc_g, input_precision=PRECISION
        )
        if ACTIVATION == "swiglu":
            acc_u = tl.dot(x, tl.load(w3_ptrs, mask=w_mask, other=0.0), acc_u,
                           input_precision=PRECISION)  # fmt: skip
            w3_ptrs += BLOCK_K * stride_w3d
        x_ptrs += BLOCK_K * stride_xd
        w1_ptrs += BLOCK_K * stride_wd
    if ACTIVATION == "swiglu":
        h = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(g) * u
    elif ACTIVATION == "relu":
        h = tl.maximum(acc_g, 0.0)
    else:
        h = 0.5 * acc_g * (1.0 + tl.math.erf(acc_g * 0.7071067811865476))
    offs_out = slot[:, None] * stride_hn + offs_f[None, :] * stride_hf
    mask = valid[:, None] & (offs_f[None, :] < F)
    tl.store(h_ptr + offs_out, h.to(h_ptr.dtype.element_ty), mask=mask)
    if SAVE_PREACT:
        tl.store(g_ptr + offs_out, acc_g.to(g_ptr.dtype.element_ty), mask=mask)
        if ACTIVATION == "swiglu":
            tl.store(u_ptr + offs_out, acc_u.to(u_ptr.dtype.element_ty), mask=mask)


# True when the kernels above were defined for Triton's CPU interpreter (TRITON_INTERPRET=1 was
# set when this module was imported): they then run on CPU tensors, and only there fast enough
INTERPRETED = type(matmul_kernel).__name__ == "InterpretedFunction"
