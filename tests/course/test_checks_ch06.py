"""The chapter 06 checks pass on right kernels and fail, naming the mistake, on wrong ones.

The wrong kernels here are written the way a learner would write them (not taken from the checks'
own variants), so these tests show that every hint a check gives is reachable. Without a CUDA GPU
they run in Triton's interpreter, which the root conftest.py switches on for the whole test run
(it must be on before triton kernels are defined).
"""

import pytest
import torch
from check_helpers import assert_check_cells_match, fails_with

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from minimoe.course.checks import ch06_kernels  # noqa: E402
from minimoe.course.checks.ch06_gather import (  # noqa: E402
    VARIANTS,
    check_gather_gemm,
    gather_gemm,
    pad_by_expert,
)
from minimoe.course.checks.ch06_memory import (  # noqa: E402
    POISON,
    guarded,
    jit_like,
    launch,
    poisoned,
)
from minimoe.course.checks.ch06_tiles import check_matmul_tile, check_scaled_add  # noqa: E402

# --- 06.1 scaled add -----------------------------------------------------------------------------


@triton.jit
def scaled_add_kernel(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, a * x + y, mask=mask)


@triton.jit
def store_unmasked(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(axis=0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    result = a * tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, result)


@triton.jit
def loads_unmasked(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(axis=0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    result = a * tl.load(x_ptr + offsets) + tl.load(y_ptr + offsets)
    tl.store(out_ptr + offsets, result, mask=offsets < n_elements)


@triton.jit
def offset_is_pid(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(axis=0) + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, a * x + y, mask=mask)


@triton.jit
def mask_le(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(axis=0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets <= n_elements  # one past the edge
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, a * x + y, mask=mask)


@triton.jit
def store_mask_le(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(axis=0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + offsets, mask=offsets < n_elements)
    y = tl.load(y_ptr + offsets, mask=offsets < n_elements)
    tl.store(out_ptr + offsets, a * x + y, mask=offsets <= n_elements)


@triton.jit
def stub_kernel(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE: tl.constexpr):
    raise NotImplementedError("Exercise 06.1: replace this line with your code")


def launcher(kernel, *, rounding="up", swap=False, in_place=False):
    def scaled_add(a, x, y):
        out = x if in_place else torch.empty_like(x)
        n = x.numel()
        grid = (triton.cdiv(n, 64) if rounding == "up" else n // 64,)
        first, second = (y, x) if swap else (x, y)
        if grid[0]:
            kernel[grid](first, second, out, a, n, BLOCK_SIZE=64)
        return out

    return scaled_add


def test_scaled_add_passes(capsys) -> None:
    check_scaled_add(scaled_add_kernel, launcher(scaled_add_kernel))
    assert "✓ Exercise 06.1 (a scaled-add kernel): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kernel, words",
    [
        (store_unmasked, ["store of element", "out_ptr", "missing mask"]),
        (loads_unmasked, ["load of element", "x_ptr", "missing mask"]),
        (offset_is_pid, ["pid * BLOCK_SIZE"]),
        (stub_kernel, ["not solved yet"]),
    ],
)
def test_scaled_add_wrong_kernel(kernel, words) -> None:
    fails_with(lambda k: check_scaled_add(k, launcher(k)), kernel, "Exercise 06.1", *words)


@pytest.mark.parametrize("kernel", [mask_le, store_mask_le])
def test_scaled_add_mask_one_past_the_edge(kernel) -> None:
    """A mask written with <= is named as such, not as a missing mask."""
    message = fails_with(
        lambda k: check_scaled_add(k, launcher(k)),
        kernel,
        "Exercise 06.1",
        "element 100",
        "one past the edge",
        "offsets < n_elements",
        "not <=",
    )
    assert "Missing mask" not in message


def test_scaled_add_refuses_the_checks_own_kernel() -> None:
    kernel = jit_like(scaled_add_kernel, ch06_kernels.scaled_add)
    fails_with(
        lambda k: check_scaled_add(k, launcher(k)),
        kernel,
        "Exercise 06.1",
        "library's own kernel `scaled_add`",
    )


@pytest.mark.parametrize(
    "variant, words",
    [
        (ch06_kernels.scaled_add_no_mask, ["missing mask"]),
        (ch06_kernels.scaled_add_no_offset, ["program offset is missing"]),
        (ch06_kernels.scaled_add_scale_y, ["x + a * y"]),
    ],
)
def test_scaled_add_check_variants_give_their_hint(variant, words) -> None:
    kernel = jit_like(scaled_add_kernel, variant)
    fails_with(lambda k: check_scaled_add(k, launcher(k)), kernel, *words)


@pytest.mark.parametrize(
    "launch_kw, words",
    [
        (dict(rounding="down"), ["rounds down", "triton.cdiv"]),
        (dict(swap=True), ["swapped"]),
        (dict(in_place=True), ["changed x"]),
    ],
)
def test_scaled_add_wrong_launch(launch_kw, words) -> None:
    answer = launcher(scaled_add_kernel, **launch_kw)
    fails_with(lambda f: check_scaled_add(scaled_add_kernel, f), answer, "Exercise 06.1", *words)


def test_scaled_add_launch_not_written_or_no_return() -> None:
    def not_done(a, x, y):
        raise NotImplementedError("Exercise 06.1: write this")

    def no_return(a, x, y):
        launcher(scaled_add_kernel)(a, x, y)

    fails_with(lambda f: check_scaled_add(scaled_add_kernel, f), not_done, "not solved yet")
    fails_with(lambda f: check_scaled_add(scaled_add_kernel, f), no_return, "forget the `return`")


def test_not_a_kernel_is_named() -> None:
    fails_with(lambda k: check_scaled_add(k, launcher(k)), lambda *a: None, "@triton.jit")


# --- 06.2 one matmul tile ------------------------------------------------------------------------


@triton.jit
def _tile_body(a_ptr, b_ptr, c_ptr, M, N, K,
               stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
               BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
               MISTAKE: tl.constexpr):  # fmt: skip
    """A learner's tile, written with the offsets recomputed from k each iteration, plus one
    mistake chosen by MISTAKE."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_SIZE_K):
        offs_k = k0 + tl.arange(0, BLOCK_SIZE_K)
        if MISTAKE == "no_advance":
            offs_k = tl.arange(0, BLOCK_SIZE_K)
        a_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        b_mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
        if MISTAKE == "no_k_mask":
            a_mask = offs_m[:, None] < M
            b_mask = offs_n[None, :] < N
        if MISTAKE == "k_le":  # one past the edge
            a_mask = (offs_m[:, None] < M) & (offs_k[None, :] <= K)
            b_mask = (offs_k[:, None] <= K) & (offs_n[None, :] < N)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        if MISTAKE == "swapped":
            b_ptrs = b_ptr + offs_k[:, None] * stride_bn + offs_n[None, :] * stride_bk
        if MISTAKE == "row_major":  # strides assumed, not read from the arguments
            b_ptrs = b_ptr + offs_k[:, None] * N + offs_n[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc += tl.dot(a, b)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if MISTAKE == "no_store_mask":
        tl.store(c_ptrs, acc)
    elif MISTAKE == "store_le":
        tl.store(c_ptrs, acc, mask=(offs_m[:, None] <= M) & (offs_n[None, :] < N))
    else:
        tl.store(c_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# one kernel per mistake, each with the exercise's signature (the interpreter runs no closures)


@triton.jit
def tile_right(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "")  # fmt: skip


@triton.jit
def tile_no_advance(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "no_advance")  # fmt: skip


@triton.jit
def tile_no_k_mask(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "no_k_mask")  # fmt: skip


@triton.jit
def tile_swapped(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "swapped")  # fmt: skip


@triton.jit
def tile_row_major(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "row_major")  # fmt: skip


@triton.jit
def tile_no_store_mask(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "no_store_mask")  # fmt: skip


@triton.jit
def tile_k_le(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "k_le")  # fmt: skip


@triton.jit
def tile_store_le(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _tile_body(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, "store_le")  # fmt: skip


@pytest.mark.parametrize(
    "kernel, words",
    [
        (tile_k_le, ["index (0, 40) of a_ptr", "the K mask"]),
        (tile_store_le, ["store", "c_ptr", "the store's rows (offs_m[:, None] < M)"]),
    ],
)
def test_matmul_tile_mask_one_past_the_edge(kernel, words) -> None:
    message = fails_with(check_matmul_tile, kernel, "Exercise 06.2", "one past the edge", *words)
    assert "missing" not in message.lower()


def test_matmul_tile_refuses_the_librarys_kernels() -> None:
    from minimoe.triton import kernels

    fails_with(check_matmul_tile, kernels.matmul_kernel, "Exercise 06.2", "library's own kernel")


def test_matmul_tile_passes(capsys) -> None:
    check_matmul_tile(tile_right)
    assert "✓ Exercise 06.2 (one matmul tile with masks): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kernel, words",
    [
        (tile_no_k_mask, ["missing K mask"]),
        (tile_no_store_mask, ["missing store mask"]),
        (tile_swapped, ["strides are swapped"]),
        (tile_no_advance, ["never advanced"]),
        (tile_row_major, ["strides passed in"]),
        (stub_kernel, ["not solved yet"]),
    ],
)
def test_matmul_tile_wrong(kernel, words) -> None:
    fails_with(check_matmul_tile, kernel, "Exercise 06.2", *words)


@pytest.mark.parametrize("flags, words", [(f, [h[:30]]) for h, f in ch06_kernels.TILE_VARIANTS])
def test_matmul_tile_check_variants_give_their_hint(flags, words) -> None:
    kernel = jit_like(scaled_add_kernel, ch06_kernels._tile)
    run = kernel.run  # launched with the variant's flags, as the check launches a kernel
    kernel.run = lambda *args, **kw: run(*args, **kw, **flags)
    fails_with(check_matmul_tile, kernel, *words)


# --- 06.3 the grouped GEMM's index-gather load ---------------------------------------------------


@triton.jit
def _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
                 BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, MISTAKE: tl.constexpr):  # fmt: skip
    """A learner's kernel (the given lines of the exercise and an answer), with one mistake."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    slot_m = tl.load(sorted_ids_ptr + offs_m)
    row_mask = slot_m < n_slots
    if MISTAKE == "position_mask":
        row_mask = offs_m < n_slots
    token_m = slot_m // top_k
    if MISTAKE == "slot_row":
        token_m = slot_m
    expert = tl.load(expert_ids_ptr + pid_m)
    if MISTAKE == "expert_pid":
        expert = pid_m
    w_expert = w_ptr + expert * swe
    if MISTAKE == "expert_stride":
        w_expert = w_ptr + expert * swo
    if MISTAKE == "expert_contiguous":
        w_expert = w_ptr + expert * D_out * D_in
    a_ptrs = x_ptr + token_m[:, None] * sxt + offs_k[None, :] * sxd
    b_ptrs = w_expert + offs_n[None, :] * swo + offs_k[:, None] * swi
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(D_in, BLOCK_SIZE_K)):
        k_mask = offs_k < D_in - k * BLOCK_SIZE_K
        if MISTAKE == "k_le":  # one past the edge
            k_mask = offs_k <= D_in - k * BLOCK_SIZE_K
        a_mask = row_mask[:, None] & k_mask[None, :]
        if MISTAKE == "no_row_mask":
            a_mask = k_mask[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & (offs_n[None, :] < D_out), other=0.0)
        acc += tl.dot(a, b)
        a_ptrs += BLOCK_SIZE_K * sxd
        b_ptrs += BLOCK_SIZE_K * swi
    out_ptrs = out_ptr + slot_m[:, None] * sos + offs_n[None, :] * soo
    tl.store(out_ptrs, acc, mask=row_mask[:, None] & (offs_n[None, :] < D_out))


@triton.jit
def gather_right(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "right")  # fmt: skip


@triton.jit
def gather_no_row_mask(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "no_row_mask")  # fmt: skip


@triton.jit
def gather_position_mask(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "position_mask")  # fmt: skip


@triton.jit
def gather_slot_row(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "slot_row")  # fmt: skip


@triton.jit
def gather_expert_pid(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "expert_pid")  # fmt: skip


@triton.jit
def gather_expert_stride(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "expert_stride")  # fmt: skip


@triton.jit
def gather_expert_contiguous(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "expert_contiguous")  # fmt: skip


@triton.jit
def gather_k_le(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in, D_out,
           sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M: tl.constexpr,
           BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):  # fmt: skip
    _gather_body(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, n_slots, top_k, D_in,
                 D_out, sxt, sxd, swe, swo, swi, sos, soo, BLOCK_SIZE_M, BLOCK_SIZE_N,
                 BLOCK_SIZE_K, "k_le")  # fmt: skip


def test_gather_gemm_k_mask_one_past_the_edge() -> None:
    message = fails_with(
        check_gather_gemm, gather_k_le, "Exercise 06.3", "D_in=20", "one past the edge", "not <="
    )
    assert "strides passed in" not in message


def test_gather_gemm_passes(capsys) -> None:
    check_gather_gemm(gather_right)
    out = capsys.readouterr().out
    assert "✓ Exercise 06.3 (the grouped GEMM's index-gather load): passed" in out


@pytest.mark.parametrize(
    "kernel, words",
    [
        (gather_no_row_mask, ["out-of-bounds rows", "index (8, 0) of x_ptr", "mask the padding"]),
        (gather_position_mask, ["out-of-bounds rows", "row_mask = slot_m < n_slots"]),
        (gather_slot_row, ["slot_m // top_k"]),
        (gather_expert_pid, ["wrong expert offset", "expert_ids_ptr + pid_m"]),
        (gather_expert_stride, ["wrong stride for the expert axis"]),
        (gather_expert_contiguous, ["strides passed in", "stride_we"]),
        (stub_kernel, ["not solved yet"]),
    ],
)
def test_gather_gemm_wrong(kernel, words) -> None:
    fails_with(check_gather_gemm, kernel, "Exercise 06.3", *words)


@pytest.mark.parametrize("flags, hint", [(f, h) for h, f in VARIANTS])
def test_gather_gemm_check_variants_give_their_hint(flags, hint) -> None:
    kernel = jit_like(scaled_add_kernel, gather_gemm)
    run = kernel.run
    kernel.run = lambda *args, **kw: run(*args, **kw, **flags)
    fails_with(check_gather_gemm, kernel, hint[:40])


def test_pad_by_expert_by_hand() -> None:
    """T=3, K=2: slots 0..5 go to experts [1, 0 | 1, 2 | 0, 1]; slot 3 is dropped; block of 2."""
    expert_TK = torch.tensor([[1, 0], [1, 2], [0, 1]])
    keep_TK = torch.tensor([[True, True], [True, False], [True, True]])
    sorted_ids, expert_ids = pad_by_expert(expert_TK, keep_TK, 4, 2)
    # expert 0: slots 1, 4; expert 1: slots 0, 2, 5 (+ one pad = 6); expert 2: none; expert 3: none
    assert sorted_ids.tolist() == [1, 4, 0, 2, 5, 6]
    assert expert_ids.tolist() == [0, 1, 1]
    assert sorted_ids.dtype == expert_ids.dtype == torch.int32


# --- the tools: guards and the interpreter's bounds check ----------------------------------------


def test_guarded_views_equal_their_values_and_sit_inside_the_marker() -> None:
    for values in (torch.randn(5), torch.randn(3, 4), torch.randn(2, 3, 4)):
        view = guarded(values, float("nan"))
        assert torch.equal(view, values) and view.untyped_storage().nbytes() > values.nbytes
    col_major = guarded(torch.randn(3, 4), 0.0, transposed=True)
    assert col_major.stride()[0] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the bounds check is the interpreter's")
def test_watch_blocks_and_records_out_of_bounds_stores() -> None:
    """The unmasked kernel's stores past the end are skipped (the guard keeps its marker) and
    recorded with the element they aimed at."""
    kernel = jit_like(scaled_add_kernel, ch06_kernels.scaled_add_no_mask)
    x, y, out = (
        guarded(torch.ones(5), 1.0),
        guarded(torch.ones(5), 1.0),
        poisoned((5,), torch.empty(0)),
    )
    outcome = launch(kernel, (1,), out, x, y, out, 2.0, 5, BLOCK_SIZE=8)
    assert out.tolist() == [3.0] * 5
    assert not bool((outcome.buffer[out.storage_offset() + 5 :] != POISON).any())
    stores = [a for a in outcome.bad if a.kind == "store"]
    assert [a.index for a in stores] == [(5,), (6,), (7,)] and stores[0].arg == "out_ptr"


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/06 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch06_gather
    from minimoe.course.checks import ch06_tiles as ch06

    assert_check_cells_match(
        ["06_triton.ipynb"],
        (ch06.SCALED_ADD, ch06.TILE, ch06_gather.GATHER),
        "from minimoe.course.checks.ch06_",
    )


def test_guard_stores_and_one_past_without_the_bounds_check() -> None:
    """Where the interpreter's bounds check is missing (a GPU), the stores into an output's guard
    are read back as accesses: one element past the end is 'one past the edge', more is not."""
    from minimoe.course.checks.ch06_memory import backing
    from minimoe.course.checks.ch06_tiles import guard_stores, one_past

    out = poisoned((5,), torch.empty(0))
    assert guard_stores(out, "out_ptr") == []
    backing(out)[out.storage_offset() + 5] = 1.0  # out[5], one past the end
    bad = guard_stores(out, "out_ptr")
    assert [(a.kind, a.arg, a.index) for a in bad] == [("store", "out_ptr", (5,))]
    assert one_past(bad, {"out_ptr": (5,)}) == {("out_ptr", 0)}
    backing(out)[out.storage_offset() + 6] = 1.0  # and out[6]: a missing mask, not <=
    assert one_past(guard_stores(out, "out_ptr"), {"out_ptr": (5,)}) == set()

    c = poisoned((3, 4), torch.empty(0))
    backing(c)[c.storage_offset() + 3 * c.stride(0)] = 0.0  # row 3 of a 3-row C
    bad = guard_stores(c, "c_ptr")
    assert [a.index for a in bad] == [(3, 0)]
    assert one_past(bad, {"c_ptr": (3, 4)}) == {("c_ptr", 0)}
