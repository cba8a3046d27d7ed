"""Checks for chapter 06 (Triton experts), exercises 06.1 and 06.2 (06.3 is in `ch06_gather`).

06.1 launches the learner's scaled-add kernel itself, on guarded tensors whose length is not a
multiple of the block, then calls the learner's launch function. 06.2 launches the learner's
matmul-tile kernel on shapes that are not multiples of the blocks, once with B stored column-major.
Both compare with float64 torch, and explain a wrong answer: an out-of-bounds load or store seen
by the interpreter's bounds check (`ch06_memory.watch_memory`) or a changed guard, the output of a
known wrong kernel (`ch06_kernels`), or elements never written. Accesses that all land exactly one
past an edge (index n, M, N or K, never further) are a mask written with <= where < was meant.

In the interpreter the kernels run on the CPU in exact float32; on a GPU `tl.dot` may use TF32,
hence the looser tolerance there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from minimoe.course.checks import ch06_kernels as kernels
from minimoe.course.checks._common import Exercise, make_generator
from minimoe.course.checks.ch06_memory import (
    POISON,
    Access,
    Outcome,
    _unravel,
    backing,
    device_for,
    expect_kernel,
    guard_written,
    guarded,
    interpreted,
    jit_like,
    launch,
    poisoned,
    run_learner,
)
from minimoe.testing import assert_close

SCALED_ADD = Exercise("06.1", "a scaled-add kernel", library=(kernels.scaled_add,))
TILE = Exercise("06.2", "one matmul tile with masks")


def tolerance(kernel: Any) -> tuple[float, float]:
    """(atol, rtol) against float64: exact float32 in the interpreter, TF32 dots on a GPU."""
    return (1e-4, 1e-4) if interpreted(kernel) else (2e-2, 1e-2)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _describe(bad: list[Access], shapes: dict[str, tuple[int, ...]]) -> str:
    """'a store to element 100 of out_ptr (100 elements)', for the first access in `bad`."""
    first = bad[0]
    shape = shapes.get(first.arg, ())
    where = first.index[0] if len(first.index) == 1 else first.index
    what = "element" if len(first.index) == 1 else "index"
    size = f" (shape {tuple(shape)})" if shape else ""
    return f"a {first.kind} of {what} {where} of {first.arg}{size}"


def guard_stores(out: torch.Tensor, arg: str) -> list[Access]:
    """The stores a kernel made into the guard around `out`, as accesses (where the interpreter's
    bounds check is not available, e.g. on a GPU)."""
    buffer = backing(out).cpu()
    changed = torch.nonzero(buffer != POISON).squeeze(1).numpy() - out.storage_offset()
    index, inside = _unravel(changed, tuple(out.shape), out.stride())
    return [
        Access("store", arg, tuple(int(ax[i]) for ax in index))
        for i in np.flatnonzero(~inside)[:10_000]
    ]


def one_past(bad: list[Access], shapes: dict[str, tuple[int, ...]]) -> set[tuple[str, int]]:
    """The (argument, axis) pairs reached exactly one past their edge, when every access in `bad`
    lies there (within the tensor on its other axes): the mark of `<=` in a mask where `<` was
    meant. Empty when any access goes further, or there is none."""
    edges = set()
    for access in bad:
        shape = shapes.get(access.arg)
        if shape is None or len(shape) != len(access.index):
            return set()
        if not all(0 <= i <= n for i, n in zip(access.index, shape)):
            return set()
        edges |= {
            (access.arg, axis) for axis, (i, n) in enumerate(zip(access.index, shape)) if i == n
        }
    return edges


def _mismatch(ex: Exercise, got: torch.Tensor, expected: torch.Tensor, case: str, **tol) -> None:
    try:
        assert_close(got, expected, name="your output", **tol)
    except AssertionError as error:
        raise ex.fail(f"wrong values on {case}: {error}") from None


# --- 06.1 a scaled-add kernel ----------------------------------------------------------------


def check_scaled_add(scaled_add_kernel: Any, scaled_add: Callable) -> None:
    """Check 06.1: `scaled_add_kernel(x_ptr, y_ptr, out_ptr, a, n_elements, BLOCK_SIZE)` computes
    out = a * x + y, and `scaled_add(a, x, y)` launches it on a new output tensor."""
    ex = SCALED_ADD
    expect_kernel(ex, scaled_add_kernel, "scaled_add_kernel")
    device = device_for(scaled_add_kernel)
    atol, rtol = tolerance(scaled_add_kernel)
    g = make_generator(61)
    # (n, BLOCK_SIZE, a): n not a multiple of the block, one element, exact multiples
    for n, block, a in ((100, 32, 2.5), (37, 16, -0.5), (1, 16, 3.0), (64, 32, 1.5)):
        x, y = (torch.randn(n, generator=g).to(device) for _ in range(2))
        case = f"n={n} with BLOCK_SIZE={block}, a={a}"

        def run(kernel: Any, x=x, y=y, a=a, n=n, block=block) -> Outcome:
            xg, yg = guarded(x, float("nan")), guarded(y, float("nan"))
            out = poisoned(x.shape, x)
            return launch(kernel, (_cdiv(n, block),), out, xg, yg, out, a, n, BLOCK_SIZE=block)

        got = run_learner(ex, run, scaled_add_kernel, case=case)
        expected = (a * x.double() + y.double()).to(x.dtype)
        if (
            got.bad
            or guard_written(got.out)
            or not torch.allclose(got.out, expected, atol=atol, rtol=rtol)
        ):
            _diagnose_scaled_add(got, expected, run, scaled_add_kernel, case, n)
    _check_launch(scaled_add, device, atol, rtol)
    ex.passed("4 lengths incl. 1 and 37 with BLOCK_SIZE=16, and your launch")


def _diagnose_scaled_add(got, expected, run, kernel, case, n) -> None:
    ex, out = SCALED_ADD, got.out
    shapes = {"x_ptr": (n,), "y_ptr": (n,), "out_ptr": (n,)}
    if got.bad or guard_written(out):
        bad = got.bad or guard_stores(out, "out_ptr")
        if one_past(bad, shapes):
            raise ex.fail(
                f"out-of-bounds access on {case} ({_describe(bad, shapes)}): one past the edge. "
                "The last element is n_elements - 1, so a mask offsets <= n_elements lets one "
                "offset too many through: use mask = offsets < n_elements (<, not <=)"
            )
        what = f" ({_describe(got.bad, shapes)})" if got.bad else ""
        raise ex.fail(
            f"out-of-bounds access on {case}{what}: the last program's block runs past "
            "n_elements. Missing mask: mask = offsets < n_elements, and pass mask=mask to both "
            "tl.load calls and to tl.store"
        )
    atol, rtol = tolerance(kernel)
    for hint, variant in (
        (
            "the program offset is missing: program pid handles elements pid * BLOCK_SIZE .. "
            "pid * BLOCK_SIZE + BLOCK_SIZE - 1, so offsets = pid * BLOCK_SIZE + "
            "tl.arange(0, BLOCK_SIZE) (every program computed the first block)",
            kernels.scaled_add_no_offset,
        ),
        (
            "you computed x + a * y: the scale multiplies x, out = a * x + y",
            kernels.scaled_add_scale_y,
        ),
    ):
        if got.same_as(run(jit_like(kernel, variant)), atol, rtol):
            raise ex.fail(f"wrong values on {case}. Likely mistake: {hint}")
    if bool((out == POISON).any()):
        raise ex.fail(
            f"some elements were never written on {case}: program pid must write elements "
            "pid * BLOCK_SIZE .. pid * BLOCK_SIZE + BLOCK_SIZE - 1 (the check launches "
            "triton.cdiv(n_elements, BLOCK_SIZE) programs)"
        )
    _mismatch(ex, out, expected, case, atol=atol, rtol=rtol)


def _check_launch(scaled_add: Callable, device: torch.device, atol: float, rtol: float) -> None:
    ex = SCALED_ADD
    ex.refuse_library(scaled_add)
    g = make_generator(62)
    for n, a in ((100, 2.5), (1, -1.0), (1000, 0.5)):
        x, y = (torch.randn(n, generator=g).to(device) for _ in range(2))
        x0, y0 = x.clone(), y.clone()
        case = f"scaled_add(a={a}, x, y) with n={n}"
        got = run_learner(ex, scaled_add, a, x, y, case=case)
        ex.expect_tensor(got, (n,), x.dtype, case)
        if not (torch.equal(x, x0) and torch.equal(y, y0)):
            raise ex.fail(f"{case} changed x or y: write into a new tensor, torch.empty_like(x)")
        expected = a * x.double() + y.double()
        if torch.allclose(got.double(), expected, atol=atol, rtol=rtol):
            continue
        if torch.allclose(got.double(), a * y.double() + x.double(), atol=atol, rtol=rtol):
            raise ex.fail(
                f"wrong values on {case}: x and y are swapped in the launch; pass them in the "
                "kernel's order: (x, y, out, a, n_elements)"
            )
        right = torch.isclose(got.double(), expected, atol=atol, rtol=rtol)
        first_wrong = int((~right).nonzero()[0])
        if bool(right[:first_wrong].all()) and first_wrong > 0 and first_wrong % 16 == 0:
            raise ex.fail(
                f"the last {n - first_wrong} elements are wrong on {case}: the grid rounds down. "
                "Launch triton.cdiv(n, BLOCK_SIZE) programs (rounding up); the mask handles "
                "the last, partial block"
            )
        _mismatch(ex, got, expected.to(got.dtype), case, atol=atol, rtol=rtol)


# --- 06.2 one matmul tile with masks ---------------------------------------------------------

_TILE_CASES = (  # (M, N, K, BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, B stored column-major)
    (20, 24, 40, 16, 16, 16, False),
    (32, 32, 32, 16, 16, 16, False),  # exact multiples of the blocks
    (1, 5, 3, 16, 16, 16, False),
    (33, 17, 50, 32, 16, 16, True),  # B a transposed view: strides (1, K + guard)
)


_TILE_EDGES = (  # ((argument, axis) reached one past its edge, the mask that lets it through)
    (("a_ptr", 1), "the K mask (offs_k < K - k * BLOCK_SIZE_K)"),
    (("b_ptr", 0), "the K mask (offs_k < K - k * BLOCK_SIZE_K)"),
    (("a_ptr", 0), "the rows of A's load (offs_m[:, None] < M)"),
    (("b_ptr", 1), "the columns of B's load (offs_n[None, :] < N)"),
    (("c_ptr", 0), "the store's rows (offs_m[:, None] < M)"),
    (("c_ptr", 1), "the store's columns (offs_n[None, :] < N)"),
)


def check_matmul_tile(matmul_tile_kernel: Any) -> None:
    """Check 06.2: `matmul_tile_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak,
    stride_bk, stride_bn, stride_cm, stride_cn, BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K)`, launched
    on a (cdiv(M, BLOCK_SIZE_M), cdiv(N, BLOCK_SIZE_N)) grid, computes C = A @ B."""
    ex = TILE
    expect_kernel(ex, matmul_tile_kernel, "matmul_tile_kernel")
    device = device_for(matmul_tile_kernel)
    atol, rtol = tolerance(matmul_tile_kernel)
    g = make_generator(63)
    for M, N, K, bm, bn, bk, b_col_major in _TILE_CASES:
        a = torch.randn(M, K, generator=g).to(device)
        b = torch.randn(K, N, generator=g).to(device)
        ag, bg = guarded(a, float("nan")), guarded(b, float("nan"), transposed=b_col_major)
        layout = ", B column-major" if b_col_major else ""
        case = f"M={M}, N={N}, K={K} with blocks ({bm}, {bn}, {bk}){layout}"
        blocks = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk)

        def run(kernel: Any, flags: dict, M=M, N=N, K=K, ag=ag, bg=bg, blocks=blocks) -> Outcome:
            c = poisoned((M, N), ag)
            strides = (*ag.stride(), *bg.stride(), *c.stride())
            grid = (_cdiv(M, blocks["BLOCK_SIZE_M"]), _cdiv(N, blocks["BLOCK_SIZE_N"]))
            return launch(kernel, grid, c, ag, bg, c, M, N, K, *strides, **blocks, **flags)

        got = run_learner(ex, run, matmul_tile_kernel, {}, case=case)
        expected = (a.double() @ b.double()).to(a.dtype)
        c = got.out
        if got.bad or guard_written(c) or not torch.allclose(c, expected, atol=atol, rtol=rtol):
            _diagnose_tile(got, expected, run, matmul_tile_kernel, case, a, b, bk)
    ex.passed(f"{len(_TILE_CASES)} shapes incl. M=1 and a column-major B")


def _diagnose_tile(got, expected, run, kernel, case, a, b, bk) -> None:
    ex, c = TILE, got.out
    atol, rtol = tolerance(kernel)
    (M, K), N = a.shape, b.shape[1]
    shapes = {"a_ptr": (M, K), "b_ptr": (K, N), "c_ptr": (M, N)}
    bad = got.bad or []
    edges = one_past(bad or guard_stores(c, "c_ptr"), shapes)
    if edges:
        masks = [mask for edge, mask in _TILE_EDGES if edge in edges]
        raise ex.fail(
            f"on {case} ({_describe(bad or guard_stores(c, 'c_ptr'), shapes)}): one past the edge. "
            f"Indices run 0 .. size - 1, so a mask written with <= lets one index too many "
            f"through; use < in {' and in '.join(dict.fromkeys(masks))}"
        )
    right = jit_like(kernel, kernels._tile)
    for hint, flags in kernels.TILE_VARIANTS:
        if got.same_as(run(right, flags), atol, rtol):
            what = f" ({_describe(bad, shapes)})" if bad else ""
            raise ex.fail(f"on {case}{what}. Likely mistake: {hint}")
    first_block = _cdiv(K, bk) * (a[:, :bk].double() @ b[:bk].double())  # read again each time
    if K > bk and torch.allclose(c.double(), first_block, atol=atol, rtol=rtol):
        raise ex.fail(f"on {case}. Likely mistake: {kernels.TILE_VARIANTS[3][0]}")
    past_k = [x for x in bad if (x.arg, x.kind) in (("a_ptr", "load"), ("b_ptr", "load"))]
    past_k = [x for x in past_k if x.index[1 if x.arg == "a_ptr" else 0] >= K]
    stores = [x for x in bad if x.kind == "store"]
    if past_k:
        raise ex.fail(f"on {case}: {_describe(past_k, shapes)}. Likely mistake: "
                      + kernels.TILE_VARIANTS[0][0])  # fmt: skip
    if stores or guard_written(c):
        what = f" ({_describe(stores, shapes)})" if stores else ""
        raise ex.fail(f"on {case}{what}. Likely mistake: " + kernels.TILE_VARIANTS[1][0])
    if bad:
        raise ex.fail(
            f"out-of-bounds load on {case} ({_describe(bad, shapes)}): mask rows of A past M and "
            "columns of B past N too (offs_m[:, None] < M, offs_n[None, :] < N), and compute "
            "every address with the strides passed in: the check's tensors are views with "
            "padded rows (as real weights often are), so a row of B is stride_bk apart, not N"
        )
    if bool((c == POISON).any()):
        raise ex.fail(
            f"some elements of C were never written on {case}: program (pid_m, pid_n) = "
            "(tl.program_id(0), tl.program_id(1)) owns rows pid_m * BLOCK_SIZE_M + "
            "tl.arange(0, BLOCK_SIZE_M) and columns pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)"
        )
    if bool(c.isnan().any()):
        raise ex.fail(
            f"NaN in C on {case}: your kernel read past the edge of A or B (the check fills "
            "the memory around them with NaN). Mask the loads, with other=0.0"
        )
    _mismatch(ex, c, expected, case, atol=atol, rtol=rtol)
