"""Version 3 of the ladder: the expert FFN end to end in two fused launches and a sum over K.

The first GEMM (`fused_up_kernel`) computes x @ w1^T (and x @ w3^T for SwiGLU, a second
accumulator over the same loaded x tile) and applies the activation in its epilogue, so the
(N, F) pre-activations never travel through memory; the second GEMM (version 2's kernel, with
the gate as a scale) multiplies each row by its gate and stores it at its slot t*K + k of a
(T, K, D) buffer. The sum over K is then a plain sum over a fixed axis: deterministic, no atomics
(vLLM's fused_moe adds the K rows the same way, `moe_sum`).

    python -m minimoe.triton 3           # or python -m minimoe.triton.v3_fused_experts

checks `fused_experts_v3(x, expert, gate, params)` against `minimoe.reference_moe`, then times it.

Left out: tensor-memory-accelerator loads, persistent kernels, split-K, FP8/INT8 weights
(vLLM's and SGLang's kernels have them); CUDA graphs, streams, and caching the index lists
between layers with the same routing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from minimoe.experts import ExpertParams
from minimoe.reference import reference_moe
from minimoe.triton.common import (
    cdiv,
    check_experts_inputs,
    ladder_inputs,
    launch_options,
    output_buffer,
    precision,
    tile_ids,
    tl,
    triton,
    validate_then_time,
)
from minimoe.triton.config import KernelConfig
from minimoe.triton.v2_grouped_gemm import SlotLayout, align_slots, grouped_gemm


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


def fused_up(
    x_TD: torch.Tensor, params: ExpertParams, layout: SlotLayout, K: int, cfg: KernelConfig,
    *, save_preact: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Launch version 3's first GEMM; returns h_NF and, when save_preact, g_NF (and u_NF)."""
    (T, D), F = x_TD.shape, params.w1_EFD.shape[1]
    N, swiglu = T * K, params.activation == "swiglu"
    h = x_TD.new_empty((N, F))
    g = x_TD.new_empty((N, F)) if save_preact else None
    u = x_TD.new_empty((N, F)) if save_preact and swiglu else None
    P, w1 = layout.sorted_ids.numel(), params.w1_EFD
    if P:
        grid = (P // cfg.block_m * cdiv(F, cfg.block_n),)
        w3 = params.w3_EFD if swiglu else w1
        fused_up_kernel[grid](
            x_TD, w1, w3, h, h if g is None else g,
            h if u is None else u, layout.sorted_ids, layout.expert_ids, layout.n_padded,
            N, F, D, P, K, x_TD.stride(0), x_TD.stride(1),
            w1.stride(0), w1.stride(1), w1.stride(2), w3.stride(0), w3.stride(1), w3.stride(2),
            h.stride(0), h.stride(1),
            ACTIVATION=params.activation, SAVE_PREACT=save_preact, PRECISION=precision(x_TD.dtype),
            GROUP_SIZE_M=cfg.group_size_m, **launch_options(cfg),
        )  # fmt: skip
    return h, g, u


def sum_over_k(
    y_ND: torch.Tensor, T: int, K: int, keep_TK: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    """y_TD = sum_k y[t*K + k], a dropped slot (never written by a kernel) counting as 0.

    A sum over a fixed axis of a (T, K, D) tensor: the same order of additions on every run.
    """
    y_TKD = y_ND.view(T, K, y_ND.shape[1])
    if keep_TK is not None:
        y_TKD = y_TKD.masked_fill(~keep_TK.unsqueeze(-1), 0.0)
    return torch.sum(y_TKD, dim=1, out=out)


class ExpertsForward(NamedTuple):
    """The forward's output and what the backward (version 4) needs of it."""

    y_TD: torch.Tensor
    layout: SlotLayout
    h_NF: torch.Tensor
    g_NF: torch.Tensor | None
    u_NF: torch.Tensor | None


def experts_forward(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None,
    cfg: KernelConfig,
    *,
    save_preact: bool = False,
    out: torch.Tensor | None = None,
) -> ExpertsForward:
    """The two launches and the sum over K, on checked inputs (`fused_experts_v3` checks them).

    save_preact: also keep the pre-activations g (and u), which the backward needs.
    """
    T, K = expert_TK.shape
    layout = align_slots(expert_TK, keep_TK, params.n_experts, cfg.block_m)
    h_NF, g_NF, u_NF = fused_up(x_TD, params, layout, K, cfg, save_preact=save_preact)
    y_ND = x_TD.new_empty((T * K, x_TD.shape[1]))
    gate_N = gate_TK.reshape(-1).contiguous()
    grouped_gemm(h_NF, params.w2_EDF, y_ND, layout, cfg, a_row_div=1, scale_N=gate_N)
    y_TD = sum_over_k(y_ND, T, K, keep_TK, out)
    return ExpertsForward(y_TD, layout, h_NF, g_NF, u_NF)


def fused_experts_v3(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
    *,
    config: KernelConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Version 3, forward only: the experts step as two fused grouped GEMMs and a sum over K.

    Same arguments and result as `minimoe.reference_moe`, without gradients (use
    `minimoe.triton.triton_moe` to train). `config`: tile sizes; `out`: optional (T, D) output.

    Returns:
        y_TD in x's dtype.
    """
    cfg = check_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK, config)
    if out is not None:
        output_buffer(out, tuple(x_TD.shape), x_TD)
    with torch.no_grad():
        return experts_forward(x_TD, expert_TK, gate_TK, params, keep_TK, cfg, out=out).y_TD


def main(argv: list[str] | None = None) -> int:
    """Check version 3 against the float64 oracle, then time it."""
    args, (x, expert_TK, gate_TK, params) = ladder_inputs(3, argv)
    want = reference_moe(x, expert_TK, gate_TK, params)
    return validate_then_time(
        3, args, lambda: [fused_experts_v3(x, expert_TK, gate_TK, params)], [want]
    )


if __name__ == "__main__":
    raise SystemExit(main())
