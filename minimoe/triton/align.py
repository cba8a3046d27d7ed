"""Padded index lists for a grouped GEMM: each expert's slots sorted together, padded to a block.

A Triton program of the grouped GEMM works on BLOCK_M rows at a time, and all its rows must
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
