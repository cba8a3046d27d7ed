"""Version 4 of the ladder: the backward, and `triton_moe`, the experts step that trains.

    y_TD = triton_moe(x_TD, expert_TK, gate_TK, params, keep_TK)   # the shared experts signature
    MoELayer(cfg, experts_fn=triton_moe)                              # trains like any other

Forward: version 3 (`v3_fused_experts.py`), keeping h, g (and u) for the backward. Backward:
every product is a Triton kernel (below): dA = dy @ w2 with the activation's backward and
dgate in its epilogue; dx as a grouped GEMM with the transposed weights (version 2's kernel),
per slot, then a fixed-order sum over K; dw1, dw3, dw2 as per-expert reductions over each
expert's rows. The only torch operations are the index lists (`v2_grouped_gemm.py`), the sums
over K and over dgate's partial sums, and zeroing dropped slots. Nothing uses atomics: two runs
give the same bits.

    python -m minimoe.triton 4           # or python -m minimoe.triton.v4_backward

checks `triton_moe`'s output and every gradient against the float64 oracle's, then times
forward + backward.

The kernels, for the gradients of x, of the gates and of every weight: with a_s = x[t] for slot s = t*K + k of expert e, g_s = a_s w1[e]^T, u_s = a_s w3[e]^T,
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

Left out: double backward (the backward is not itself differentiable); recomputing g and u in
the backward instead of saving them (activation checkpointing: saves 2*N*F elements of memory
for one more GEMM); split-K over the rows of a hot expert in the weight gradients.
"""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams
from minimoe.reference import reference_moe
from minimoe.testing import outputs_and_grads
from minimoe.triton.common import (
    cdiv,
    check_experts_inputs,
    ladder_inputs,
    launch_options,
    precision,
    tile_ids,
    tl,
    triton,
    validate_then_time,
)
from minimoe.triton.config import KernelConfig
from minimoe.triton.v2_grouped_gemm import SlotLayout, grouped_gemm
from minimoe.triton.v3_fused_experts import experts_forward, sum_over_k


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


def expert_grad(
    a: torch.Tensor, a_row_div: int, b: torch.Tensor, b_row_div: int, dw_EOI: torch.Tensor,
    layout: SlotLayout, cfg: KernelConfig, n_slots: int, scale_N: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """dw[e] = sum over the slots s of expert e of (scale_s a[s // a_row_div])^T b[s // b_row_div].

    n_slots: N = T*K, also the sentinel of the padded rows.
    """
    E, O1, O2 = dw_EOI.shape
    grid = (E, cdiv(O1, cfg.block_n), cdiv(O2, cfg.block_k))
    expert_grad_kernel[grid](
        a, b, scale_N if scale_N is not None else a, dw_EOI,
        layout.sorted_ids, layout.expert_starts, n_slots, O1, O2,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        dw_EOI.stride(0), dw_EOI.stride(1), dw_EOI.stride(2),
        A_ROW_DIV=a_row_div, B_ROW_DIV=b_row_div, HAS_SCALE=scale_N is not None,
        PRECISION=precision(a.dtype), **launch_options(cfg),
    )  # fmt: skip
    return dw_EOI


def act_grad(
    dy_TD: torch.Tensor, params: ExpertParams, g: torch.Tensor, u: torch.Tensor | None,
    gate_N: torch.Tensor, layout: SlotLayout, K: int, cfg: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """dg_NF, du_NF (SwiGLU) and dgate_N (summed over the column blocks in a fixed order)."""
    (N, F), D = g.shape, dy_TD.shape[1]
    dg = g.new_empty((N, F))
    du = g.new_empty((N, F)) if u is not None else None
    parts = g.new_empty((N, cdiv(F, cfg.block_n)), dtype=torch.float32)
    P, w2 = layout.sorted_ids.numel(), params.w2_EDF
    if P:
        grid = (P // cfg.block_m * cdiv(F, cfg.block_n),)
        act_grad_kernel[grid](
            dy_TD, w2, g, g if u is None else u, gate_N, dg, dg if du is None else du, parts,
            layout.sorted_ids, layout.expert_ids, layout.n_padded, N, F, D, P, K,
            dy_TD.stride(0), dy_TD.stride(1), w2.stride(0), w2.stride(1), w2.stride(2),
            g.stride(0), g.stride(1), parts.stride(0),
            ACTIVATION=params.activation, PRECISION=precision(g.dtype),
            GROUP_SIZE_M=cfg.group_size_m, **launch_options(cfg),
        )  # fmt: skip
    return dg, du, parts.sum(1)


class TritonMoEFunction(torch.autograd.Function):
    """y = the experts step; gradients for x, the gates and w1, w2 (and w3)."""

    @staticmethod
    def forward(ctx, x_TD, gate_TK, w1_EFD, w2_EDF, w3_EFD, expert_TK, keep_TK, activation, cfg):
        params = ExpertParams(w1_EFD, w2_EDF, w3_EFD, activation)
        fwd = experts_forward(x_TD, expert_TK, gate_TK, params, keep_TK, cfg, save_preact=True)
        gate_N = gate_TK.reshape(-1).contiguous()
        ctx.save_for_backward(x_TD, gate_N, w1_EFD, w2_EDF, w3_EFD, fwd.h_NF, fwd.g_NF, fwd.u_NF)
        ctx.layout, ctx.cfg, ctx.activation = fwd.layout, cfg, activation
        ctx.keep_TK, ctx.K = keep_TK, expert_TK.shape[1]
        return fwd.y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, gate_N, w1, w2, w3, h, g, u = ctx.saved_tensors
        layout, cfg, K, keep_TK = ctx.layout, ctx.cfg, ctx.K, ctx.keep_TK
        params = ExpertParams(w1, w2, w3, ctx.activation)
        T, D = x_TD.shape
        need_x, need_gate, need_w1, need_w2, need_w3 = ctx.needs_input_grad[:5]
        dy_TD = dy_TD.to(x_TD.dtype)
        dg, du, dgate_N = act_grad(dy_TD, params, g, u, gate_N, layout, K, cfg)
        dx = dgate = dw1 = dw2 = dw3 = None
        if need_x:
            dx_ND = x_TD.new_empty((T * K, D))
            w1_EDF, w3_EDF = w1.transpose(1, 2), None if w3 is None else w3.transpose(1, 2)
            grouped_gemm(dg, w1_EDF, dx_ND, layout, cfg, a_row_div=1, a2=du, w2_EOI=w3_EDF)
            dx = sum_over_k(dx_ND, T, K, keep_TK, None)
        if need_gate:
            if keep_TK is not None:
                dgate_N = dgate_N.masked_fill(~keep_TK.reshape(-1), 0.0)
            dgate = dgate_N.view(T, K).to(gate_N.dtype)
        if need_w1:
            dw1 = torch.empty_like(w1)
            expert_grad(dg, 1, x_TD, K, dw1, layout, cfg, T * K)
        if need_w3 and w3 is not None:
            dw3 = torch.empty_like(w3)
            expert_grad(du, 1, x_TD, K, dw3, layout, cfg, T * K)
        if need_w2:
            dw2 = torch.empty_like(w2)
            expert_grad(dy_TD, K, h, 1, dw2, layout, cfg, T * K, scale_N=gate_N)
        return dx, dgate, dw1, dw2, dw3, None, None, None, None


def triton_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
    *,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """The experts step on Triton kernels, differentiable with respect to x, gate and every weight.

    Same signature and result as `minimoe.reference_moe` (so `MoELayer(cfg,
    experts_fn=triton_moe)` works), plus an optional `config` (`KernelConfig`; the device's
    default when None).

    Args:
        x_TD: tokens (T, D), on a CUDA GPU (float32, float16, bfloat16) or on the CPU with
            TRITON_INTERPRET=1 (float32, float16).
        expert_TK: int (T, K), the expert of each slot.
        gate_TK: (T, K), the gate weight of each slot.
        params: the experts' weights (`ExpertParams`), in x's dtype and device.
        keep_TK: bool (T, K), the slots that survived the capacity limit (None = all).

    Returns:
        y_TD in x's dtype.
    """
    cfg = check_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK, config)
    leaves = (x_TD, gate_TK, params.w1_EFD, params.w2_EDF, params.w3_EFD)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)):
        return experts_forward(x_TD, expert_TK, gate_TK, params, keep_TK, cfg).y_TD  # no saving
    return TritonMoEFunction.apply(
        x_TD, gate_TK, params.w1_EFD, params.w2_EDF, params.w3_EFD, expert_TK, keep_TK,
        params.activation, cfg,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Check version 4's output and every gradient against the float64 oracle's, then time it."""
    args, inputs = ladder_inputs(4, argv)

    def run() -> list[torch.Tensor]:
        y, grads = outputs_and_grads(triton_moe, *inputs)
        return [y, *grads]

    y_ref, grads_ref = outputs_and_grads(reference_moe, *inputs)
    return validate_then_time(4, args, run, [y_ref, *grads_ref])


if __name__ == "__main__":
    raise SystemExit(main())
