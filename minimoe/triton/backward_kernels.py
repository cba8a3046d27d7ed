"""The backward Triton kernels of the experts step: gradients of x, of the gates and of every weight.

With a_s = x[t] for slot s = t*K + k of expert e, g_s = a_s w1[e]^T, u_s = a_s w3[e]^T,
h_s = silu(g_s) * u_s (or gelu(g_s), relu(g_s)), and y[t] = sum_k gate_s h_s w2[e]^T, the chain rule gives

    dA_s     = dy[t] @ w2[e]                      (F,)   act_grad_kernel: a grouped GEMM ...
    dgate_s  = <h_s, dA_s>                               ... its epilogue: dgate, and
    dh_s     = gate_s * dA_s                             the activation's backward:
    dg_s     = dh_s * u_s * silu'(g_s),  du_s = dh_s * silu(g_s)      (GELU, ReLU: dh_s * act'(g_s))
    dx[t]    = sum_k dg_s @ w1[e] + du_s @ w3[e]         grouped_gemm_kernel (HAS_SECOND), per
                                                         slot, then a fixed-order sum over K
    dw1[e]   = sum_{s of e} dg_s^T x[t]                  expert_grad_kernel, one launch each:
    dw3[e]   = sum_{s of e} du_s^T x[t]                  a reduction over the expert's rows
    dw2[e]   = sum_{s of e} (gate_s dy[t])^T h_s

silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g))); relu'(g) = [g > 0]; gelu'(g) = Phi(g) + g * phi(g) with Phi, phi
the normal CDF and density. Every sum is in a fixed order: dgate's sum over F is split into one
partial sum per column block (a (N, F / BLOCK_N) buffer) that the launcher adds up, rather than
added with atomics, so a run is bit-for-bit repeatable.

Left out: recomputing g and u in the backward instead of saving them (saves 2*N*F of memory for
one more GEMM), split-K over the rows of a hot expert in the weight gradients.
"""

from __future__ import annotations

import triton
import triton.language as tl

from minimoe.triton.kernels import tile_ids


@triton.jit
def act_grad_kernel(
    dy_ptr,  # (T, D): the gradient of y; slot t*K + k reads row t
    w2_ptr,  # (E, D, F): the down projections
    g_ptr, u_ptr,  # (N, F): the saved pre-activations (u only for SwiGLU)
    gate_ptr,  # (N,): the gate of each slot
    dg_ptr, du_ptr,  # (N, F) outputs: the gradients of g and u
    dgate_part_ptr,  # (N, cdiv(F, BLOCK_N)) float32 output: <h, dA> over one column block each
    sorted_ids_ptr, expert_ids_ptr, n_padded_ptr,  # the padded index lists (align.py)
    N, F, D, P, K,  # slots, hidden size, model size, padded rows, experts per token
    stride_dyt, stride_dyd,  # element steps of dy
    stride_we, stride_wd, stride_wf,  # ... of w2
    stride_gn, stride_gf,  # ... of g, u, dg and du (all (N, F), same strides)
    stride_pn,  # ... of dgate_part along N
    ACTIVATION: tl.constexpr, PRECISION: tl.constexpr,  # "swiglu", "gelu" or "relu"
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """dA = dy[s // K] @ w2[e] for one tile, then dg, du and a partial dgate in the epilogue."""
    pid_m, pid_n = tile_ids(tl.program_id(0), P // BLOCK_M, tl.cdiv(F, BLOCK_N), GROUP_SIZE_M)
    if pid_m * BLOCK_M >= tl.load(n_padded_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ids_ptr + offs_m).to(tl.int64)
    valid = slot < N
    token = slot // K
    e = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_K)
    dy_ptrs = dy_ptr + token[:, None] * stride_dyt + offs_d[None, :] * stride_dyd
    w_ptrs = w2_ptr + e * stride_we + offs_d[:, None] * stride_wd + offs_f[None, :] * stride_wf
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        dy = tl.load(dy_ptrs, mask=valid[:, None] & (offs_d[None, :] + d0 < D), other=0.0)
        w = tl.load(w_ptrs, mask=(offs_d[:, None] + d0 < D) & (offs_f[None, :] < F), other=0.0)
        acc = tl.dot(dy.to(w.dtype), w, acc, input_precision=PRECISION)
        dy_ptrs += BLOCK_K * stride_dyd
        w_ptrs += BLOCK_K * stride_wd
    # epilogue: the tile of dA is in registers; finish the chain rule here
    mask = valid[:, None] & (offs_f[None, :] < F)
    offs_gf = slot[:, None] * stride_gn + offs_f[None, :] * stride_gf
    g = tl.load(g_ptr + offs_gf, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + slot, mask=valid, other=0.0).to(tl.float32)
    dh = acc * gate[:, None]
    if ACTIVATION == "swiglu":
        u = tl.load(u_ptr + offs_gf, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        h = silu * u
        dg = dh * u * sig * (1.0 + g * (1.0 - sig))
        tl.store(du_ptr + offs_gf, (dh * silu).to(du_ptr.dtype.element_ty), mask=mask)
    elif ACTIVATION == "relu":
        h = tl.maximum(g, 0.0)
        dg = tl.where(g > 0.0, dh, 0.0)  # relu'(0) = 0, as torch
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        h = g * cdf
        dg = dh * (cdf + g * tl.exp(-0.5 * g * g) * 0.3989422804014327)  # 1 / sqrt(2 pi)
    tl.store(dg_ptr + offs_gf, dg.to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_part_ptr + slot * stride_pn + pid_n, tl.sum(h * acc, axis=1), mask=valid)


@triton.jit
def expert_grad_kernel(
    a_ptr,  # (rows, O1): slot s reads row s // A_ROW_DIV (dg, du, or dy)
    b_ptr,  # (rows, O2): slot s reads row s // B_ROW_DIV (x, or h)
    scale_ptr,  # (N,): multiplies a's row of each slot when HAS_SCALE (the gate)
    dw_ptr,  # (E, O1, O2) output: dw[e] = sum over the slots s of expert e of a_s^T b_s
    sorted_ids_ptr,  # (P,) int32: slot ids sorted by expert, padded with N
    expert_starts_ptr,  # (E + 1,) int32: expert e owns sorted rows starts[e] .. starts[e + 1]
    N, O1, O2,  # slots and the two sizes of one weight gradient
    stride_am, stride_ao,  # element steps of a along rows and O1
    stride_bm, stride_bo,  # ... of b along rows and O2
    stride_we, stride_w1, stride_w2,  # ... of dw along E, O1 and O2
    A_ROW_DIV: tl.constexpr, B_ROW_DIV: tl.constexpr, HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # sorted rows per step of the reduction (the lists' padding unit)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # the (O1, O2) output tile
):  # fmt: skip
    """One (BLOCK_N x BLOCK_K) tile of one expert's weight gradient, summed over its rows.

    Grid (E, cdiv(O1, BLOCK_N), cdiv(O2, BLOCK_K)). The reduction runs over the rows the expert
    received, BLOCK_M at a time, both operands gathered through the slot ids as in version 2;
    a is loaded already transposed (O1 along the tile's rows). An expert without rows stores a
    zero tile: its gradient is zero, and it is written.
    """
    e = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_q = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    start = tl.load(expert_starts_ptr + e)
    end = tl.load(expert_starts_ptr + e + 1)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):
        slot = tl.load(sorted_ids_ptr + r0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        valid = slot < N
        a_ptrs = a_ptr + (slot // A_ROW_DIV)[None, :] * stride_am + offs_p[:, None] * stride_ao
        a_t = tl.load(a_ptrs, mask=valid[None, :] & (offs_p[:, None] < O1), other=0.0)
        if HAS_SCALE:
            scale = tl.load(scale_ptr + slot, mask=valid, other=0.0).to(tl.float32)
            a_t = (a_t.to(tl.float32) * scale[None, :]).to(a_t.dtype)
        b_ptrs = b_ptr + (slot // B_ROW_DIV)[:, None] * stride_bm + offs_q[None, :] * stride_bo
        b = tl.load(b_ptrs, mask=valid[:, None] & (offs_q[None, :] < O2), other=0.0)
        acc = tl.dot(a_t, b.to(a_t.dtype), acc, input_precision=PRECISION)
    dw_ptrs = dw_ptr + e * stride_we + offs_p[:, None] * stride_w1 + offs_q[None, :] * stride_w2
    tl.store(
        dw_ptrs,
        acc.to(dw_ptr.dtype.element_ty),
        mask=(offs_p[:, None] < O1) & (offs_q[None, :] < O2),
    )
