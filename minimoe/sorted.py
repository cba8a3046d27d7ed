"""Sort-based dropless dispatch: sort the routed slots by expert, run every expert on a contiguous run.

The one-hot einsum builds (T, E, C) tensors that are mostly zeros. Sorting avoids them: flatten
the N = T*K slots, drop the slots the capacity limit removed, and sort the rest by expert
(stably, so each expert's rows stay in token order). Expert e then owns rows
offsets[e-1]:offsets[e] of the sorted tokens, and nothing is padded or dropped. This is the
MegaBlocks idea (Gale et al., arXiv 2211.15841, "dropless MoE"), written with a grouped matmul as
torchtitan and HF transformers v5 (`grouped_mm` experts) do.

    1. sort_slots:  order_R (which slot goes where), counts_E, offsets_E (int32 cumulative ends),
                    inverse_N (where each slot went: the inverse permutation)
    2. gather:      x_RD = x_TD[token of order_R]   (R: the kept slots, R <= N = T*K)
    3. experts:     (a) `padded_bmm_moe`: scatter the runs into a zero-padded (E, max_count, D)
                        buffer and use one batched matmul;
                    (b) `grouped_mm_moe`: one grouped matmul over the sorted rows, no padding.
    4. combine:     gather the expert outputs back by inverse_N into (T, K, D) and take the
                    gate-weighted sum over K as a batched (1 x K) @ (K x D) product: a fixed order
                    of additions, no atomics, so the result is deterministic.

The grouped matmul is PyTorch's `torch.nn.functional.grouped_mm` (or `torch._grouped_mm` in older
releases) where it runs for the device and dtype. On CPU with torch 2.13 it runs for float32,
bfloat16 and float16 when every row stride is a multiple of 16 bytes (D and F multiples of 4 in
float32); it has no float64 kernel. Elsewhere `grouped_mm_moe` uses `loop_grouped_mm`, a Python
loop of matmuls over the contiguous slices of the sorted rows (named so a benchmark can say which
path ran; see `grouped_mm_path`).

Left out: the block-sparse kernels of MegaBlocks, expert parallelism (chapter 09), and fusing the
gather and scatter into the matmul (the Triton chapter).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from minimoe.experts import ExpertParams, activate, validate_experts_inputs
from minimoe.validate import (
    check_expert_ids,
    check_float_tensor,
    check_index_tensor,
    check_int,
    check_mask,
)

_GROUPED_MM: Callable[..., torch.Tensor] | None
_GROUPED_MM_NAME: str | None
if hasattr(F, "grouped_mm"):  # public from torch 2.10
    _GROUPED_MM, _GROUPED_MM_NAME = F.grouped_mm, "torch.nn.functional.grouped_mm"
elif hasattr(torch, "_grouped_mm"):  # torch 2.8 / 2.9
    _GROUPED_MM, _GROUPED_MM_NAME = torch._grouped_mm, "torch._grouped_mm"
else:
    _GROUPED_MM, _GROUPED_MM_NAME = None, None
_GROUPED_MM_WORKS: dict[tuple[str, torch.dtype], bool] = {}  # (device type, dtype) -> probed once


def sort_slots(
    expert_TK: torch.Tensor, keep_TK: torch.Tensor | None, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the kept slots by expert (stable: token order within an expert).

    A slot is named by its flat id s = t * K + k.

    Args:
        expert_TK: chosen experts (int).
        keep_TK: bool, the slots that survived the capacity limit (None = all).
        n_experts: E.

    Returns:
        order_R: int64 (R,), the flat slot ids in sorted order (R = number of kept slots).
        counts_E: int64 (E,), kept slots per expert.
        offsets_E: int32 (E,), cumulative ends: expert e owns sorted rows
            offsets_E[e] - counts_E[e] .. offsets_E[e] (the `offs` of a grouped matmul).
        inverse_N: int64 (T*K,), the sorted row of each slot: inverse_N[order_R] == arange(R);
            -1 for a dropped slot.
    """
    check_index_tensor("expert_TK", expert_TK, dim=2)
    if keep_TK is not None:
        check_mask("keep_TK", keep_TK, tuple(expert_TK.shape))
    check_int("n_experts", n_experts, low=1)
    check_expert_ids(expert_TK, n_experts)
    return _sort_slots(expert_TK, keep_TK, n_experts)


def _sort_slots(
    expert_TK: torch.Tensor, keep_TK: torch.Tensor | None, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sort_slots` without the input checks, for callers that validated their inputs already."""
    expert_N = expert_TK.reshape(-1).long()
    if keep_TK is None:
        sorted_expert_R, order_R = torch.sort(expert_N, stable=True)
    else:
        kept_R = torch.nonzero(keep_TK.reshape(-1)).squeeze(1)
        sorted_expert_R, by_expert_R = torch.sort(expert_N[kept_R], stable=True)
        order_R = kept_R[by_expert_R]
    counts_E = torch.bincount(sorted_expert_R, minlength=n_experts)
    offsets_E = torch.cumsum(counts_E, 0).to(torch.int32)
    inverse_N = torch.full_like(expert_N, -1)
    inverse_N[order_R] = torch.arange(order_R.numel(), device=expert_N.device)
    return order_R, counts_E, offsets_E, inverse_N


def _combine(
    y_RD: torch.Tensor, inverse_N: torch.Tensor, gate_TK: torch.Tensor, T: int, K: int
) -> torch.Tensor:
    """y_TD = sum_k gate[t, k] * y_RD[inverse[t, k]], a dropped slot (-1) reading a zero row."""
    D = y_RD.shape[1]
    if bool((inverse_N < 0).any()):
        y_RD = torch.cat([y_RD, y_RD.new_zeros(1, D)])  # row R: the zero row of dropped slots
        inverse_N = torch.where(inverse_N < 0, y_RD.shape[0] - 1, inverse_N)
    y_TKD = y_RD[inverse_N].view(T, K, D)
    gate_T1K = gate_TK.to(y_RD.dtype).unsqueeze(1)
    return torch.bmm(gate_T1K, y_TKD).squeeze(1)  # (T, 1, K) @ (T, K, D): a fixed-order sum over K


def padded_bmm_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sorted dispatch, experts as one batched matmul over a zero-padded (E, max_count, D) buffer.

    Same signature as `minimoe.reference_moe`. The padding is max_count - count_e rows per
    expert: cheap when the load is balanced, wasteful when one expert is hot.

    Returns:
        y_TD in x's dtype.
    """
    validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK)
    T, K = expert_TK.shape
    E, D = params.n_experts, x_TD.shape[1]
    order_R, counts_E, offsets_E, inverse_N = _sort_slots(expert_TK, keep_TK, E)
    R = order_R.numel()
    expert_R = torch.repeat_interleave(torch.arange(E, device=x_TD.device), counts_E)
    row_R = torch.arange(R, device=x_TD.device) - (offsets_E.long() - counts_E)[expert_R]
    C = int(counts_E.max())  # the longest run sets the padded length
    flat_R = expert_R * C + row_R  # each sorted row's place in the flattened (E * C) buffer
    x_RD = x_TD[order_R // K]
    x_ECD = x_RD.new_zeros(E * C, D).index_copy(0, flat_R, x_RD).view(E, C, D)
    h_ECF = torch.bmm(x_ECD, params.w1_EFD.transpose(1, 2))
    u_ECF = None if params.w3_EFD is None else torch.bmm(x_ECD, params.w3_EFD.transpose(1, 2))
    y_ECD = torch.bmm(activate(h_ECF, u_ECF, params.activation), params.w2_EDF.transpose(1, 2))
    y_RD = y_ECD.reshape(E * C, D)[flat_R]
    return _combine(y_RD, inverse_N, gate_TK, T, K)


def loop_grouped_mm(a_RI: torch.Tensor, b_EIO: torch.Tensor, counts_E: list[int]) -> torch.Tensor:
    """The fallback grouped matmul: one matmul per expert over its contiguous slice of rows.

    Args:
        a_RI: sorted rows (R, I).
        b_EIO: one (I, O) matrix per expert.
        counts_E: rows per expert (a Python list, so the loop needs no device sync).

    Returns:
        (R, O): row r multiplied by the matrix of the expert that owns it.
    """
    outs, start = [], 0
    for e, n in enumerate(counts_E):
        if n:
            outs.append(a_RI[start : start + n] @ b_EIO[e])
            start += n
    if not outs:
        return a_RI @ b_EIO[0]  # no rows: an empty (0, O) result, still in the graph
    return torch.cat(outs)


def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Try the native grouped matmul (forward and backward) once per (device type, dtype)."""
    key = (device.type, dtype)
    if key not in _GROUPED_MM_WORKS:
        works = False
        if _GROUPED_MM is not None:
            try:
                a = torch.ones(3, 16, device=device, dtype=dtype, requires_grad=True)
                b = torch.ones(2, 16, 16, device=device, dtype=dtype, requires_grad=True)
                offs = torch.tensor([1, 3], device=device, dtype=torch.int32)
                out = _GROUPED_MM(a, b, offs=offs)
                out.backward(torch.ones_like(out))
                works = bool(torch.allclose(out.float(), torch.full_like(out.float(), 16.0)))
            except (RuntimeError, NotImplementedError, TypeError):
                works = False
        _GROUPED_MM_WORKS[key] = works
    return _GROUPED_MM_WORKS[key]


def grouped_mm_path(x_TD: torch.Tensor, params: ExpertParams) -> str:
    """Which grouped matmul `grouped_mm_moe` uses for these inputs.

    Returns:
        "torch.nn.functional.grouped_mm" (or "torch._grouped_mm"), the native kernel, when the
        installed torch runs it for x's device and dtype and every row stride is a multiple of
        16 bytes; otherwise "loop_grouped_mm", the loop of matmuls over contiguous slices.
    """
    check_float_tensor("x_TD", x_TD, dim=2)
    if not hasattr(params, "w1_EFD"):
        raise TypeError(f"params must be an ExpertParams, got {type(params).__name__}")
    check_float_tensor("w1_EFD", params.w1_EFD, dim=3)
    D, F_ = x_TD.shape[1], params.w1_EFD.shape[1]
    aligned = (D * x_TD.element_size()) % 16 == 0 and (F_ * x_TD.element_size()) % 16 == 0
    if _GROUPED_MM_NAME is not None and aligned and _probe_grouped_mm(x_TD.device, x_TD.dtype):
        return _GROUPED_MM_NAME
    return "loop_grouped_mm"


def grouped_mm_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sorted dispatch, experts as a grouped matmul over the sorted rows: no padding, no drops.

    Same signature as `minimoe.reference_moe`. Uses PyTorch's grouped matmul where it runs (see
    `grouped_mm_path`), else `loop_grouped_mm`.

    Returns:
        y_TD in x's dtype.
    """
    validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK)
    T, K = expert_TK.shape
    E = params.n_experts
    order_R, counts_E, offsets_E, inverse_N = _sort_slots(expert_TK, keep_TK, E)
    x_RD = x_TD[order_R // K]
    native = _GROUPED_MM
    if grouped_mm_path(x_TD, params) == "loop_grouped_mm" or native is None:
        counts = counts_E.tolist()  # one device sync for the whole loop

        def mm(a_RI: torch.Tensor, w_EOI: torch.Tensor) -> torch.Tensor:
            return loop_grouped_mm(a_RI, w_EOI.transpose(1, 2), counts)
    else:

        def mm(a_RI: torch.Tensor, w_EOI: torch.Tensor) -> torch.Tensor:
            return native(a_RI, w_EOI.transpose(1, 2), offs=offsets_E)

    h_RF = mm(x_RD, params.w1_EFD)
    u_RF = None if params.w3_EFD is None else mm(x_RD, params.w3_EFD)
    y_RD = mm(activate(h_RF, u_RF, params.activation), params.w2_EDF)
    return _combine(y_RD, inverse_N, gate_TK, T, K)
