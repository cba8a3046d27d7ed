"""`triton_moe`: the Triton experts step with its backward, as a `torch.autograd.Function`.

    y_TD = triton_moe(x_TD, expert_TK, gate_TK, params, keep_TK)   # the shared experts signature
    MoELayer(cfg, experts_fn=triton_moe)                              # trains like any other

Forward: version 3 (`kernels.py`), keeping h, g (and u) for the backward. Backward: every
product is a Triton kernel (`backward_kernels.py`): dA = dy @ w2 with the activation's backward
and dgate in its epilogue; dx as a grouped GEMM with the transposed weights, per slot, then a
fixed-order sum over K; dw1, dw3, dw2 as per-expert reductions over each expert's rows. The only
torch operations are the index lists (`align.py`), the sums over K and over dgate's partial
sums, and zeroing dropped slots. Nothing uses atomics: two runs give the same bits.

Left out: double backward (the backward is not itself differentiable); activation
checkpointing (g and u are saved, 2*N*F elements).
"""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams
from minimoe.triton.align import SlotLayout, align_slots
from minimoe.triton.config import KernelConfig
from minimoe.triton.ops import (
    _launch_options,
    check_inputs,
    empty,
    forward_no_grad,
    fused_up,
    grouped_gemm,
    load_kernels,
    precision,
    sum_over_k,
    triton_cdiv,
)


def expert_grad(
    a: torch.Tensor, a_row_div: int, b: torch.Tensor, b_row_div: int, dw_EPQ: torch.Tensor,
    layout: SlotLayout, cfg: KernelConfig, n_slots: int, scale_N: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """dw[e] = sum over the slots s of expert e of (scale_s a[s // a_row_div])^T b[s // b_row_div].

    n_slots: N = T*K, also the sentinel of the padded rows.
    """
    _, bk = load_kernels(a.device)
    E, O1, O2 = dw_EPQ.shape
    grid = (E, triton_cdiv(O1, cfg.block_n), triton_cdiv(O2, cfg.block_k))
    bk.expert_grad_kernel[grid](
        a, b, scale_N if scale_N is not None else a, dw_EPQ,
        layout.sorted_ids, layout.expert_starts, n_slots, O1, O2,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        dw_EPQ.stride(0), dw_EPQ.stride(1), dw_EPQ.stride(2),
        A_ROW_DIV=a_row_div, B_ROW_DIV=b_row_div, HAS_SCALE=scale_N is not None,
        PRECISION=precision(a.dtype), **_launch_options(cfg),
    )  # fmt: skip
    return dw_EPQ


def act_grad(
    dy_TD: torch.Tensor, params: ExpertParams, g: torch.Tensor, u: torch.Tensor | None,
    gate_N: torch.Tensor, layout: SlotLayout, K: int, cfg: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """dg_NF, du_NF (SwiGLU) and dgate_N (summed over the column blocks in a fixed order)."""
    _, bk = load_kernels(dy_TD.device)
    (N, F), D = g.shape, dy_TD.shape[1]
    dg = empty((N, F), g.dtype, g.device)
    du = empty((N, F), g.dtype, g.device) if u is not None else None
    parts = empty((N, triton_cdiv(F, cfg.block_n)), torch.float32, g.device)
    P, w2 = layout.sorted_ids.numel(), params.w2_EDF
    if P:
        grid = (P // cfg.block_m * triton_cdiv(F, cfg.block_n),)
        bk.act_grad_kernel[grid](
            dy_TD, w2, g, g if u is None else u, gate_N, dg, dg if du is None else du, parts,
            layout.sorted_ids, layout.expert_ids, layout.n_padded, N, F, D, P, K,
            dy_TD.stride(0), dy_TD.stride(1), w2.stride(0), w2.stride(1), w2.stride(2),
            g.stride(0), g.stride(1), parts.stride(0),
            ACTIVATION=params.activation, PRECISION=precision(g.dtype),
            GROUP_SIZE_M=cfg.group_size_m, **_launch_options(cfg),
        )  # fmt: skip
    return dg, du, parts.sum(1)


class TritonMoEFunction(torch.autograd.Function):
    """y = the experts step; gradients for x, the gates and w1, w2 (and w3)."""

    @staticmethod
    def forward(ctx, x_TD, gate_TK, w1_EFD, w2_EDF, w3_EFD, expert_TK, keep_TK, activation, cfg):
        params = ExpertParams(w1_EFD, w2_EDF, w3_EFD, activation)
        T, K = expert_TK.shape
        layout = align_slots(expert_TK, keep_TK, params.n_experts, cfg.block_m)
        h, g, u = fused_up(x_TD, params, layout, K, cfg, save_preact=True)
        y_ND = empty((T * K, x_TD.shape[1]), x_TD.dtype, x_TD.device)
        gate_N = gate_TK.reshape(-1).contiguous()
        grouped_gemm(h, w2_EDF, y_ND, layout, cfg, a_row_div=1, scale_N=gate_N)
        ctx.save_for_backward(x_TD, gate_N, w1_EFD, w2_EDF, w3_EFD, h, g, u)
        ctx.layout, ctx.cfg, ctx.activation, ctx.keep_TK, ctx.K = (
            layout,
            cfg,
            activation,
            keep_TK,
            K,
        )
        return sum_over_k(y_ND, T, K, keep_TK, None)

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
            dx_ND = empty((T * K, D), x_TD.dtype, x_TD.device)
            w1_EDF, w3_EDF = w1.transpose(1, 2), None if w3 is None else w3.transpose(1, 2)
            grouped_gemm(dg, w1_EDF, dx_ND, layout, cfg, a_row_div=1, a2=du, w2_EOI=w3_EDF)
            dx = sum_over_k(dx_ND, T, K, keep_TK, None)
        if need_gate:
            if keep_TK is not None:
                dgate_N = dgate_N.masked_fill(~keep_TK.reshape(-1), 0.0)
            dgate = dgate_N.view(T, K).to(gate_N.dtype)
        if need_w1:
            dw1 = empty(w1.shape, w1.dtype, w1.device)
            expert_grad(dg, 1, x_TD, K, dw1, layout, cfg, T * K)
        if need_w3 and w3 is not None:
            dw3 = empty(w3.shape, w3.dtype, w3.device)
            expert_grad(du, 1, x_TD, K, dw3, layout, cfg, T * K)
        if need_w2:
            dw2 = empty(w2.shape, w2.dtype, w2.device)
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
    cfg = check_inputs(x_TD, expert_TK, gate_TK, params, keep_TK, config)
    leaves = (x_TD, gate_TK, params.w1_EFD, params.w2_EDF, params.w3_EFD)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)):
        return forward_no_grad(x_TD, expert_TK, gate_TK, params, keep_TK, cfg)  # nothing to save
    return TritonMoEFunction.apply(
        x_TD, gate_TK, params.w1_EFD, params.w2_EDF, params.w3_EFD, expert_TK, keep_TK,
        params.activation, cfg,
    )  # fmt: skip
