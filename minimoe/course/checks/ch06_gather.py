"""Check for chapter 06, exercise 06.3: the grouped GEMM's index-gather load.

The learner's kernel multiplies the routed slots by their experts' weights, one block of slots
per program, reading the token rows through an index list instead of a gathered copy of x:

    sorted_ids   the kept slots s = t * K + k sorted by expert, each expert's run padded to a
                 multiple of BLOCK_SIZE_M with the sentinel T * K (indices are padded, not rows,
                 as vLLM's `moe_align_block_size` does)
    expert_ids   the expert of each block of BLOCK_SIZE_M entries
    out[s]       = x[s // K] @ w[expert of s].T, one row per slot, written only for kept slots

The check launches it on seeded routings (drops, experts without slots, every first choice on one
expert, T = 1, K = E, D not a multiple of the block), on guarded tensors under the interpreter's
bounds check, and names the mistake: padding rows not masked (they point one row past x), the
block id used as the expert, a wrong stride for the expert axis, the slot id used as the token row.

Left out: the activation and the second GEMM (the lesson's v3 kernel fuses them).
"""

from __future__ import annotations

from typing import Any

import torch

from minimoe.course.checks._common import Exercise, make_generator, make_routing
from minimoe.course.checks.ch06_memory import (
    POISON,
    Outcome,
    device_for,
    expect_kernel,
    guard_written,
    guarded,
    jit_like,
    launch,
    poisoned,
    run_learner,
)
from minimoe.course.checks.ch06_tiles import _cdiv, _describe, _mismatch, one_past, tolerance

try:  # the annotations below are strings, so this module imports without triton
    import triton.language as tl
except ImportError:  # pragma: no cover - a platform without triton
    tl = None

BLOCK = 16  # BLOCK_SIZE_M = BLOCK_SIZE_N = BLOCK_SIZE_K: tl.dot needs at least 16


def pad_by_expert(
    expert_TK: torch.Tensor, keep_TK: torch.Tensor, n_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept slots sorted by expert, each expert's run padded to a multiple of `block_m`.

    Args:
        expert_TK: (T, K) expert of each slot; keep_TK: (T, K) bool, False = dropped.
        n_experts: E. block_m: the block size (rows per program).

    Returns:
        (sorted_ids int32 of length n_blocks * block_m, padding entries = T * K;
         expert_ids int32 of length n_blocks). An expert without slots gets no block.
    """
    T, K = expert_TK.shape
    expert_N, keep_N = expert_TK.reshape(-1), keep_TK.reshape(-1)
    ids, experts = [], []
    for e in range(n_experts):
        slots = torch.nonzero((expert_N == e) & keep_N).squeeze(1)
        n_blocks = _cdiv(slots.numel(), block_m)
        padded = torch.full((n_blocks * block_m,), T * K, dtype=torch.long)
        padded[: slots.numel()] = slots
        ids.append(padded)
        experts += [e] * n_blocks
    sorted_ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    return sorted_ids.to(torch.int32), torch.tensor(experts, dtype=torch.int32)


def gather_gemm(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
                n_slots, top_k, D_in, D_out,
                stride_xt, stride_xd, stride_we, stride_wo, stride_wi, stride_os, stride_oo,
                BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr,
                BLOCK_SIZE_K: tl.constexpr, ROW_MASK: tl.constexpr, EXPERT: tl.constexpr,
                TOKEN_ROW: tl.constexpr):  # fmt: skip
    """The right kernel (ROW_MASK=True, EXPERT="ids", TOKEN_ROW="slot // K") and the wrong ones."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    slot_m = tl.load(sorted_ids_ptr + offs_m)
    row_mask = slot_m < n_slots
    if TOKEN_ROW == "slot // K":
        token_m = slot_m // top_k
    else:
        token_m = slot_m
    if EXPERT == "ids":
        w_base = w_ptr + tl.load(expert_ids_ptr + pid_m) * stride_we
    elif EXPERT == "pid":
        w_base = w_ptr + pid_m * stride_we
    else:  # the expert offset along the wrong axis
        w_base = w_ptr + tl.load(expert_ids_ptr + pid_m) * stride_wo
    a_ptrs = x_ptr + token_m[:, None] * stride_xt + offs_k[None, :] * stride_xd
    b_ptrs = w_base + offs_k[:, None] * stride_wi + offs_n[None, :] * stride_wo
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(D_in, BLOCK_SIZE_K)):
        k_mask = offs_k < D_in - k * BLOCK_SIZE_K
        if ROW_MASK:
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & (offs_n[None, :] < D_out), other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
        a_ptrs += BLOCK_SIZE_K * stride_xd
        b_ptrs += BLOCK_SIZE_K * stride_wi
    out_ptrs = out_ptr + slot_m[:, None] * stride_os + offs_n[None, :] * stride_oo
    tl.store(out_ptrs, acc, mask=row_mask[:, None] & (offs_n[None, :] < D_out))


GATHER = Exercise("06.3", "the grouped GEMM's index-gather load")
RIGHT = dict(ROW_MASK=True, EXPERT="ids", TOKEN_ROW="slot // K")
_PADDING_HINT = (
    "out-of-bounds rows: the padding entries of sorted_ids hold T * K, so their token row "
    "T * K // K = T is one past the last row of x. Mask the padding rows in the A load: "
    "mask=row_mask[:, None] & k_mask[None, :], with row_mask = slot_m < n_slots (<, not <=: "
    "a padding entry equals n_slots)"
)
VARIANTS = (  # (the hint, the flags that make the mistake)
    (_PADDING_HINT, dict(RIGHT, ROW_MASK=False)),
    (
        "wrong expert offset: block pid_m does not belong to expert pid_m. Its expert is "
        "tl.load(expert_ids_ptr + pid_m); the weights start at w_ptr + expert * stride_we",
        dict(RIGHT, EXPERT="pid"),
    ),
    (
        "wrong stride for the expert axis: expert e's weights start at w_ptr + e * stride_we "
        "(w is (E, D_out, D_in); stride_wo steps one output row, not one expert)",
        dict(RIGHT, EXPERT="stride"),
    ),
    (
        "the token row is the slot id: slot s = t * K + k belongs to token t = s // K, so "
        "token_m = slot_m // top_k (the row of x to load)",
        dict(RIGHT, TOKEN_ROW="slot"),
    ),
)

# (T, K, E, D_in, D_out, drop probability, every first choice on this expert)
_CASES = (
    (8, 2, 4, 32, 24, 0.0, None),  # D_out not a multiple of BLOCK_SIZE_N
    (5, 2, 4, 20, 16, 0.3, None),  # D_in not a multiple of BLOCK_SIZE_K; dropped slots
    (6, 2, 3, 16, 16, 0.0, 1),  # every first choice on expert 1: several blocks of one expert
    (1, 1, 4, 16, 16, 0.0, None),  # T = 1: three experts without a slot
    (4, 3, 3, 16, 20, 0.0, None),  # K = E
)


def check_gather_gemm(gather_gemm_kernel: Any) -> None:
    """Check 06.3: `gather_gemm_kernel(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr,
    n_slots, top_k, D_in, D_out, stride_xt, stride_xd, stride_we, stride_wo, stride_wi,
    stride_os, stride_oo, BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K)`, launched on a
    (n_blocks, cdiv(D_out, BLOCK_SIZE_N)) grid, writes out[s] = x[s // K] @ w[e].T for each
    kept slot s."""
    ex = GATHER
    expect_kernel(ex, gather_gemm_kernel, "gather_gemm_kernel")
    device = device_for(gather_gemm_kernel)
    atol, rtol = tolerance(gather_gemm_kernel)
    for i, (T, K, E, D_in, D_out, drop, only) in enumerate(_CASES):
        g = make_generator(70 + i)
        expert_TK, _, keep_TK = make_routing(T, E, K, seed=70 + i, drop=drop, only_expert=only)
        x = torch.randn(T, D_in, generator=g).to(device)
        w = (torch.randn(E, D_out, D_in, generator=g) / D_in**0.5).to(device)
        sorted_ids, expert_ids = (t.to(device) for t in pad_by_expert(expert_TK, keep_TK, E, BLOCK))
        case = (
            f"T={T}, K={K}, E={E}, D_in={D_in}, D_out={D_out}, {expert_ids.numel()} blocks of "
            f"{BLOCK} slots (expert_ids={expert_ids.tolist()})"
        )

        def run(kernel: Any, flags: dict, x=x, w=w, ids=(sorted_ids, expert_ids), TK=(T, K)):
            xg, wg = guarded(x, float("nan")), guarded(w, float("nan"))
            out = poisoned((TK[0] * TK[1], w.shape[1]), x)
            grid = (ids[1].numel(), _cdiv(w.shape[1], BLOCK))
            args = (xg, wg, out, *ids, TK[0] * TK[1], TK[1], w.shape[2], w.shape[1])
            strides = (*xg.stride(), *wg.stride(), *out.stride())
            blocks = dict(BLOCK_SIZE_M=BLOCK, BLOCK_SIZE_N=BLOCK, BLOCK_SIZE_K=BLOCK)
            return launch(kernel, grid, out, *args, *strides, **blocks, **flags)

        got = run_learner(ex, run, gather_gemm_kernel, {}, case=case)
        expected = _expected(x, w, expert_TK.to(device), keep_TK.to(device))
        ok = torch.isclose(got.out, expected, atol=atol, rtol=rtol) | (expected == POISON)
        if got.bad or guard_written(got.out) or not bool(ok.all()):
            _diagnose(got, expected, run, gather_gemm_kernel, case, (T, K, E, D_in, D_out))
    ex.passed(f"{len(_CASES)} routings incl. drops, empty experts, T=1, K=E")


def _expected(x: torch.Tensor, w: torch.Tensor, expert_TK, keep_TK) -> torch.Tensor:
    """out[s] = x[s // K] @ w[expert_TK[s]].T for kept slots, POISON for dropped ones."""
    T, K = expert_TK.shape
    out = torch.full((T * K, w.shape[1]), POISON, dtype=torch.float64, device=x.device)
    for s in torch.nonzero(keep_TK.reshape(-1)).squeeze(1).tolist():
        out[s] = x[s // K].double() @ w[expert_TK.reshape(-1)[s]].double().t()
    return out.to(x.dtype)


def _diagnose(got: Outcome, expected, run, kernel, case, sizes) -> None:
    ex = GATHER
    atol, rtol = tolerance(kernel)
    T, K, E, D_in, D_out = sizes
    shapes = {"x_ptr": (T, D_in), "w_ptr": (E, D_out, D_in), "out_ptr": (T * K, D_out)}
    bad = got.bad or []
    right = jit_like(kernel, gather_gemm)
    for hint, flags in VARIANTS:
        if got.same_as(run(right, flags), atol, rtol):
            what = f" ({_describe(bad, shapes)})" if bad else ""
            raise ex.fail(f"on {case}{what}. Likely mistake: {hint}")
    edges = one_past(bad, shapes)
    if edges and edges <= {("x_ptr", 1), ("w_ptr", 2)}:
        raise ex.fail(
            f"on {case} ({_describe(bad, shapes)}): one past the edge. Columns run 0 .. D_in - 1, "
            "so a k mask written with <= lets one column too many through: "
            "k_mask = offs_k < D_in - k * BLOCK_SIZE_K (<, not <=)"
        )
    x_rows = [a for a in bad if a.arg == "x_ptr" and a.kind == "load" and a.index[0] >= T]
    x_cols = [a for a in bad if a.arg == "x_ptr" and a.kind == "load" and a.index[1] >= D_in]
    experts = [a for a in bad if a.arg == "w_ptr" and not 0 <= a.index[0] < E]
    stores = [a for a in bad if a.kind == "store"]
    if x_rows and {a.index[0] for a in x_rows} == {T}:
        raise ex.fail(f"on {case} ({_describe(x_rows, shapes)}). Likely mistake: {_PADDING_HINT}")
    if x_rows:
        raise ex.fail(f"on {case} ({_describe(x_rows, shapes)}). Likely mistake: {VARIANTS[3][0]}")
    if experts:
        raise ex.fail(f"on {case} ({_describe(experts, shapes)}). Likely mistake: {VARIANTS[1][0]}")
    if any(a.arg == "w_ptr" for a in bad):
        w_bad = [a for a in bad if a.arg == "w_ptr"]
        raise ex.fail(
            f"on {case} ({_describe(w_bad, shapes)}): compute the weight addresses with the "
            "strides passed in, w_ptr + expert * stride_we + n * stride_wo + k * stride_wi; the "
            "check's w is a view with padded rows, so an expert is not D_out * D_in elements long"
        )
    if x_cols:
        raise ex.fail(
            f"on {case} ({_describe(x_cols, shapes)}): D_in is not a multiple of BLOCK_SIZE_K; "
            "mask the last K block in the A load with k_mask[None, :] (and other=0.0)"
        )
    if stores or guard_written(got.out):
        what = f" ({_describe(stores, shapes)})" if stores else ""
        raise ex.fail(
            f"a store outside out on {case}{what}: padding entries must not be stored; "
            "row_mask = slot_m < n_slots (a padding entry holds n_slots = T * K)"
        )
    if bad:
        raise ex.fail(f"out-of-bounds access on {case}: {_describe(bad, shapes)}")
    missing = (got.out == POISON) & (expected != POISON)
    if bool(missing.any()):
        raise ex.fail(
            f"some kept slots' rows were never written on {case}: the store writes row slot_m "
            "of out (one row per slot, not per token), masked by row_mask"
        )
    if bool(got.out.isnan().any()):
        raise ex.fail(
            f"NaN in out on {case}: your kernel read past the edge of x or w (the check fills "
            "the memory around them with NaN). Mask the loads, with other=0.0"
        )
    _mismatch(ex, got.out, expected, case, atol=atol, rtol=rtol)
