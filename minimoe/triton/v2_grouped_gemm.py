"""Version 2 of the ladder: every expert in ONE launch, a grouped GEMM over padded index lists.

The slots are sorted by expert, and each expert's run is padded to a multiple of BLOCK_M (the
block alignment below); each program computes one tile of one expert, and gathers its input
rows itself: it loads integer row ids, then x_ptr + row * stride. No gathered copy of x is ever
written. The same kernel is the second GEMM of version 3 (with the gate as a scale) and the
input gradient of version 4 (with a second product added).

    python -m minimoe.triton 2           # or python -m minimoe.triton.v2_grouped_gemm

checks `grouped_gemm_v2(x, w1, expert)` against the float64 products, slot by slot, then times it.

The block alignment: each expert's slots sorted together, padded to a block. A Triton program of the grouped GEMM works on BLOCK_M rows at a time, and all its rows must
belong to one expert (they are multiplied by one weight matrix). So the slots are sorted by
expert and each expert's run is padded to a multiple of BLOCK_M with a sentinel slot id, N = T*K,
that no real slot has: a kernel masks it on load and never stores it. Only the *indices* are
padded, never the activations: the kernel gathers rows of x through them. This is vLLM's
`moe_align_block_size` (vllm/model_executor/layers/fused_moe), written here with torch ops.

    expert_TK = [[2, 0], [0, 2], [2, 1]], block_m = 4  (T=3, K=2, N=6 slots, sentinel 6)

    slot s = t*K + k   0  1  2  3  4  5
    expert             2  0  0  2  2  1
    sorted_ids  = [1, 2, 6, 6 | 5, 6, 6, 6 | 0, 3, 4, 6]   (expert 0 | expert 1 | expert 2)
    expert_ids  = [0, 1, 2]                                  (one entry per block of 4 rows)
    n_padded    = 12

The kernels use `align_slots`, which needs no host-device synchronisation: its arrays have the
largest length any routing could need (N + min(E, N) * (block_m - 1) rows, rounded up to a block)
and the kernels read n_padded from device memory and skip the blocks past it, as vLLM does.
`align_block_size` is the trimmed, easy-to-print form of the same lists.

Left out: vLLM's CUDA kernel for this step (one block per expert counting with shared-memory
atomics); expert parallelism (slots of experts on other devices).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from minimoe.experts import ExpertParams
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
from minimoe.validate import check_expert_ids, check_index_tensor, check_int, check_mask


class AlignedSlots(NamedTuple):
    """The index lists of a grouped GEMM (see the module docstring).

    Attributes:
        sorted_ids: int32 (P,), slot ids t*K + k sorted by expert, each expert's run padded to a
            multiple of block_m with the sentinel T*K.
        expert_ids: int32 (P / block_m,), the expert of each block of block_m rows.
        n_padded: the number of rows in use (an int from `align_block_size`; a one-element
            int32 tensor on the device from `align_slots`, where P may be larger).
    """

    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    n_padded: int | torch.Tensor


class SlotLayout(NamedTuple):
    """Everything the kernels need: the padded lists, plus where each expert's rows start.

    Attributes:
        sorted_ids, expert_ids, n_padded: as in `AlignedSlots` (n_padded a (1,) tensor).
        expert_starts: int32 (E + 1,), expert e owns padded rows expert_starts[e] ..
            expert_starts[e + 1] (the weight-gradient kernel loops over them).
        block_m: the block size the lists are padded to.
    """

    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    n_padded: torch.Tensor
    expert_starts: torch.Tensor
    block_m: int


def max_padded_rows(n_slots: int, n_experts: int, block_m: int) -> int:
    """The most padded rows any routing of n_slots slots over n_experts experts can need.

    Each expert with at least one slot adds at most block_m - 1 rows of padding, and at most
    min(E, N) experts have a slot. Rounded up to a whole block.
    """
    rows = n_slots + min(n_experts, n_slots) * (block_m - 1)
    return -(-rows // block_m) * block_m


def align_slots(
    expert_TK: torch.Tensor, keep_TK: torch.Tensor | None, n_experts: int, block_m: int
) -> SlotLayout:
    """The padded index lists, computed on the device without a host-device synchronisation.

    Args:
        expert_TK: int (T, K), the expert of each slot (ids in [0, n_experts): validated by the
            caller).
        keep_TK: bool (T, K), the slots that survived the capacity limit (None = all).
        n_experts: E.
        block_m: rows per block, the BLOCK_M of the kernels.

    Returns:
        A `SlotLayout`; dropped slots appear nowhere in it.
    """
    device = expert_TK.device
    N = expert_TK.numel()
    expert_N = expert_TK.reshape(-1).long()
    if keep_TK is not None:  # a dropped slot goes to a virtual expert E, sorted last, never used
        expert_N = torch.where(keep_TK.reshape(-1), expert_N, n_experts)
    sorted_expert_N, order_N = torch.sort(expert_N, stable=True)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=device)
    counts.scatter_add_(0, expert_N, torch.ones_like(expert_N))
    counts_E = counts[:n_experts]
    starts_E = torch.cumsum(counts_E, 0) - counts_E  # where each expert's run starts, unpadded
    padded_E = (counts_E + block_m - 1) // block_m * block_m
    padded_ends_E = torch.cumsum(padded_E, 0)
    padded_starts_E = padded_ends_E - padded_E

    P = max_padded_rows(N, n_experts, block_m)
    # row r of the sorted slots goes to padded row padded_start[e] + (r - start[e]); dropped
    # slots (virtual expert E) go to row P, a dump row cut off below
    e_N = sorted_expert_N.clamp(max=n_experts - 1)
    dest_N = padded_starts_E[e_N] + torch.arange(N, device=device) - starts_E[e_N]
    dest_N = torch.where(sorted_expert_N < n_experts, dest_N, P)
    sorted_ids = torch.full((P + 1,), N, dtype=torch.int32, device=device)
    sorted_ids[dest_N] = order_N.to(torch.int32)
    block_starts = torch.arange(0, P, block_m, device=device)
    expert_ids = torch.searchsorted(padded_ends_E, block_starts, right=True)
    expert_ids = expert_ids.clamp(max=n_experts - 1).to(torch.int32)  # blocks past n_padded
    zero = padded_ends_E.new_zeros(1)
    return SlotLayout(
        sorted_ids=sorted_ids[:P],
        expert_ids=expert_ids,
        n_padded=torch.cat([zero, padded_ends_E])[-1:].to(torch.int32),
        expert_starts=torch.cat([zero, padded_ends_E]).to(torch.int32),
        block_m=block_m,
    )


def align_block_size(
    expert_TK: torch.Tensor, keep_TK: torch.Tensor | None, n_experts: int, block_m: int
) -> AlignedSlots:
    """vLLM-style padded index lists, trimmed to the rows in use (one host sync, for reading).

    Args:
        expert_TK: int (T, K), the expert of each slot.
        keep_TK: bool (T, K), the slots that survived the capacity limit (None = all).
        n_experts: E.
        block_m: the block size each expert's run is padded to (>= 1).

    Returns:
        `AlignedSlots(sorted_ids, expert_ids, n_padded)`: sorted_ids int32 (n_padded,) with the
        sentinel T*K in the padding; expert_ids int32 (n_padded / block_m,); n_padded an int.
    """
    check_index_tensor("expert_TK", expert_TK, dim=2)
    if expert_TK.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"expert_TK must be int32 or int64, got {expert_TK.dtype}")
    if keep_TK is not None:
        check_mask("keep_TK", keep_TK, tuple(expert_TK.shape))
    check_int("n_experts", n_experts, low=1)
    check_int("block_m", block_m, low=1)
    check_expert_ids(expert_TK, n_experts)
    layout = align_slots(expert_TK, keep_TK, n_experts, block_m)
    n = int(layout.n_padded)
    return AlignedSlots(layout.sorted_ids[:n], layout.expert_ids[: n // block_m], n)


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


def grouped_gemm(
    a: torch.Tensor,
    w_EOI: torch.Tensor,
    out_NO: torch.Tensor,
    layout: SlotLayout,
    cfg: KernelConfig,
    *,
    a_row_div: int,
    scale_N: torch.Tensor | None = None,
    a2: torch.Tensor | None = None,
    w2_EOI: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch version 2: out[s] = scale[s] * (a[s // a_row_div] @ w[e(s)]^T (+ a2[..] @ w2[e]^T)).

    w_EOI, a2 and w2_EOI may be any strided views, each read through its own strides: the
    backward passes w1_EFD.transpose(1, 2) and w3_EFD.transpose(1, 2), which need not share a
    layout.
    """
    N, O = out_NO.shape
    P = layout.sorted_ids.numel()
    if P == 0:
        return out_NO
    grid = (P // cfg.block_m * cdiv(O, cfg.block_n),)
    has_second = a2 is not None
    a2 = a if a2 is None else a2
    w2_EOI = w_EOI if w2_EOI is None else w2_EOI
    grouped_gemm_kernel[grid](
        a, w_EOI, out_NO, scale_N if scale_N is not None else a, a2, w2_EOI,
        layout.sorted_ids, layout.expert_ids, layout.n_padded,
        N, O, w_EOI.shape[2], P,
        a.stride(0), a.stride(1), w_EOI.stride(0), w_EOI.stride(1), w_EOI.stride(2),
        a2.stride(0), a2.stride(1), w2_EOI.stride(0), w2_EOI.stride(1), w2_EOI.stride(2),
        out_NO.stride(0), out_NO.stride(1),
        A_ROW_DIV=a_row_div, HAS_SCALE=scale_N is not None, HAS_SECOND=has_second,
        PRECISION=precision(a.dtype), GROUP_SIZE_M=cfg.group_size_m, **launch_options(cfg),
    )  # fmt: skip
    return out_NO


def grouped_gemm_v2(
    x_TD: torch.Tensor,
    w_EOI: torch.Tensor,
    expert_TK: torch.Tensor,
    keep_TK: torch.Tensor | None = None,
    *,
    config: KernelConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Version 2: every slot's row of x times its expert's matrix, all experts in one launch.

    Args:
        x_TD: tokens (T, D) = (T, I).
        w_EOI: (E, O, I) weights, one (O, I) matrix per expert (w1_EFD, or w2_EDF with I = F).
        expert_TK: int (T, K), the expert of each slot.
        keep_TK: bool (T, K), the slots that survived the capacity limit (None = all).
        config: tile sizes (`KernelConfig`); the device's default when None.
        out: optional (T*K, O) output buffer in x's dtype.

    Returns:
        out_NO: (N = T*K, O) in SLOT order: row t*K + k is x[t] @ w[expert[t, k]]^T, a zero row
        for a dropped slot.
    """
    if w_EOI.dim() != 3 or x_TD.dim() != 2 or w_EOI.shape[2] != x_TD.shape[1]:
        raise ValueError(f"need x (T, I) and w (E, O, I), got {tuple(x_TD.shape)}, {tuple(w_EOI.shape)}")  # fmt: skip
    E, O, _ = w_EOI.shape
    # validate as an experts step with w as w1; w2 is a stand-in of the right shape, no memory
    fake = ExpertParams(w_EOI, w_EOI.new_zeros(1).expand(E, x_TD.shape[1], O), None, "gelu")
    gate = x_TD.new_ones(expert_TK.shape)
    cfg = check_experts_inputs(x_TD, expert_TK, gate, fake, keep_TK, config)
    T, K = expert_TK.shape
    out_NO = output_buffer(out, (T * K, O), x_TD)
    layout = align_slots(expert_TK, keep_TK, E, cfg.block_m)
    grouped_gemm(x_TD, w_EOI, out_NO, layout, cfg, a_row_div=K)
    if keep_TK is not None:
        out_NO.masked_fill_(~keep_TK.reshape(-1, 1), 0.0)
    return out_NO


def main(argv: list[str] | None = None) -> int:
    """Check version 2 on the first projection against the float64 products, then time it."""
    args, (x, expert_TK, _, params) = ladder_inputs(2, argv)
    x_ND = x.double().repeat_interleave(args.K, 0)  # slot t*K + k reads token t
    w_NFD = params.w1_EFD.double()[expert_TK.reshape(-1)]
    want = torch.einsum("nd,nfd->nf", x_ND, w_NFD)
    return validate_then_time(
        2, args, lambda: [grouped_gemm_v2(x, params.w1_EFD, expert_TK)], [want]
    )


if __name__ == "__main__":
    raise SystemExit(main())
