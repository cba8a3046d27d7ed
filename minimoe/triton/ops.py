"""Launchers of the Triton kernels: input checks, grids, buffers, and the forward ladder functions.

    matmul_v1(a_MK, b_KN)                                  version 1, one expert's matmul
    grouped_gemm_v2(x_TD, w_EOI, expert_TK, keep_TK)       version 2, every expert in one launch
    fused_experts_v3(x_TD, expert_TK, gate_TK, params)     version 3, the fused FFN forward

Where they run: on CUDA tensors in float32 (products in full float32: TF32 off), float16 or
bfloat16, accumulating in float32; on CPU tensors through Triton's interpreter in float32 or
float16 only (the interpreter computes bfloat16 wrongly, so it is refused), with tiny shapes
(it runs each program in Python, about a thousand times slower than the GPU). The interpreter
is on when TRITON_INTERPRET=1 is in the environment before the kernels are first defined,
i.e. before the first call of any function here (`kernels.py` is imported then).

Left out: CUDA graphs, streams, and caching the index lists between layers with the same routing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from minimoe.experts import ExpertParams, validate_experts_inputs
from minimoe.triton.align import SlotLayout, align_slots
from minimoe.triton.config import KernelConfig, default_config

TRITON_NEEDS = "Triton needs Linux (and a CUDA GPU, or TRITON_INTERPRET=1 on CPU)"
_POISON = {"on": False}  # test hook: fill every buffer with NaN so an unwritten element shows


@contextmanager
def poison_buffers() -> Iterator[None]:
    """Within this block, every float buffer the launchers allocate starts as NaN (for tests)."""
    _POISON["on"] = True
    try:
        yield
    finally:
        _POISON["on"] = False


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or a NaN-filled tensor inside `poison_buffers()`."""
    if _POISON["on"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def load_kernels(device: torch.device) -> tuple[ModuleType, ModuleType]:
    """The forward and backward kernel modules, after checking that they can run on `device`."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"{TRITON_NEEDS}; this machine runs {sys.platform}")
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{TRITON_NEEDS}; triton is not installed (pip install triton)") from err
    from minimoe.triton import backward_kernels, kernels

    if device.type == "cpu" and not kernels.INTERPRETED:
        raise RuntimeError(
            f"{TRITON_NEEDS}. These tensors are on the CPU but the kernels were defined for a "
            "GPU: set TRITON_INTERPRET=1 in the environment before the kernels are defined (before "
            "the first call into minimoe.triton), e.g. `TRITON_INTERPRET=1 python ...`, or "
            "os.environ['TRITON_INTERPRET'] = '1' in a notebook's first cell, then restart the "
            "kernel"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"the Triton kernels run on a CUDA GPU or the CPU, not on {device.type}")
    return kernels, backward_kernels


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Raise for a dtype the kernels do not run on this device."""
    if device.type == "cpu":
        if dtype == torch.bfloat16:
            raise TypeError(
                "the interpreter has no bfloat16 (its results are wrong): use float32 or float16 "
                "on the CPU; bfloat16 runs on a CUDA GPU"
            )
        if dtype not in (torch.float32, torch.float16):
            raise TypeError(f"on the CPU the kernels take float32 or float16, got {dtype}")
    elif dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the kernels take float32, float16 or bfloat16, got {dtype}")


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact float32 products for float32 ("ieee": TF32 off)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_options(cfg: KernelConfig) -> dict:
    return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # fmt: skip


def matmul_v1(
    a_MK: torch.Tensor,
    b_KN: torch.Tensor,
    *,
    block_m: int = 32,
    block_n: int = 32,
    block_k: int = 32,
    group_size_m: int = 8,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Version 1: one expert's matmul, a_MK @ b_KN, as a grid of BLOCK_M x BLOCK_N tiles.

    Args:
        a_MK: (M, K) rows (float32/float16; bfloat16 on a GPU).
        b_KN: (K, N) in a's dtype and device (a transposed view, such as w.t(), is fine).
        block_m, block_n, block_k: the tile, powers of two >= 16.
        group_size_m: row blocks per group of the grouped program order.
        out: optional (M, N) output in a's dtype; a new tensor when None.

    Returns:
        c_MN in a's dtype.
    """
    if a_MK.dim() != 2 or b_KN.dim() != 2 or a_MK.shape[1] != b_KN.shape[0]:
        raise ValueError(f"need (M, K) @ (K, N), got {tuple(a_MK.shape)} @ {tuple(b_KN.shape)}")
    if a_MK.dtype != b_KN.dtype or a_MK.device != b_KN.device:
        raise TypeError(f"a and b differ: {a_MK.dtype}/{a_MK.device} vs {b_KN.dtype}/{b_KN.device}")
    cfg = KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, group_size_m=group_size_m)
    check_dtype(a_MK.dtype, a_MK.device)
    kernels, _ = load_kernels(a_MK.device)
    M, N = a_MK.shape[0], b_KN.shape[1]
    c = output_buffer(out, (M, N), a_MK)
    if M and N:
        grid = (triton_cdiv(M, block_m) * triton_cdiv(N, block_n),)
        kernels.matmul_kernel[grid](
            a_MK, b_KN, c, M, N, a_MK.shape[1],
            a_MK.stride(0), a_MK.stride(1), b_KN.stride(0), b_KN.stride(1), c.stride(0), c.stride(1),
            PRECISION=precision(a_MK.dtype), GROUP_SIZE_M=group_size_m, **_launch_options(cfg),
        )  # fmt: skip
    return c


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


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
    kernels, _ = load_kernels(a.device)
    N, O = out_NO.shape
    P = layout.sorted_ids.numel()
    if P == 0:
        return out_NO
    grid = (P // cfg.block_m * triton_cdiv(O, cfg.block_n),)
    has_second = a2 is not None
    a2 = a if a2 is None else a2
    w2_EOI = w_EOI if w2_EOI is None else w2_EOI
    kernels.grouped_gemm_kernel[grid](
        a, w_EOI, out_NO, scale_N if scale_N is not None else a, a2, w2_EOI,
        layout.sorted_ids, layout.expert_ids, layout.n_padded,
        N, O, w_EOI.shape[2], P,
        a.stride(0), a.stride(1), w_EOI.stride(0), w_EOI.stride(1), w_EOI.stride(2),
        a2.stride(0), a2.stride(1), w2_EOI.stride(0), w2_EOI.stride(1), w2_EOI.stride(2),
        out_NO.stride(0), out_NO.stride(1),
        A_ROW_DIV=a_row_div, HAS_SCALE=scale_N is not None, HAS_SECOND=has_second,
        PRECISION=precision(a.dtype), GROUP_SIZE_M=cfg.group_size_m, **_launch_options(cfg),
    )  # fmt: skip
    return out_NO


def fused_up(
    x_TD: torch.Tensor, params: ExpertParams, layout: SlotLayout, K: int, cfg: KernelConfig,
    *, save_preact: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Launch version 3's first GEMM; returns h_NF and, when save_preact, g_NF (and u_NF)."""
    kernels, _ = load_kernels(x_TD.device)
    (T, D), F = x_TD.shape, params.w1_EFD.shape[1]
    N, swiglu = T * K, params.activation == "swiglu"
    h = empty((N, F), x_TD.dtype, x_TD.device)
    g = empty((N, F), x_TD.dtype, x_TD.device) if save_preact else None
    u = empty((N, F), x_TD.dtype, x_TD.device) if save_preact and swiglu else None
    P, w1 = layout.sorted_ids.numel(), params.w1_EFD
    if P:
        grid = (P // cfg.block_m * triton_cdiv(F, cfg.block_n),)
        w3 = params.w3_EFD if swiglu else w1
        kernels.fused_up_kernel[grid](
            x_TD, w1, w3, h, h if g is None else g,
            h if u is None else u, layout.sorted_ids, layout.expert_ids, layout.n_padded,
            N, F, D, P, K, x_TD.stride(0), x_TD.stride(1),
            w1.stride(0), w1.stride(1), w1.stride(2), w3.stride(0), w3.stride(1), w3.stride(2),
            h.stride(0), h.stride(1),
            ACTIVATION=params.activation, SAVE_PREACT=save_preact, PRECISION=precision(x_TD.dtype),
            GROUP_SIZE_M=cfg.group_size_m, **_launch_options(cfg),
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


def output_buffer(
    out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """`out` checked to be a `shape` tensor in `like`'s dtype and device, or a new one if None."""
    if out is None:
        return empty(shape, like.dtype, like.device)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"out must be a {like.dtype} {tuple(shape)} tensor on {like.device}")
    return out


def check_inputs(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None,
    config: KernelConfig | None,
) -> KernelConfig:
    """Validate the experts-step inputs for the kernels; returns the config to use."""
    validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK)
    check_dtype(x_TD.dtype, x_TD.device)
    if config is not None and not isinstance(config, KernelConfig):
        raise TypeError(f"config must be a KernelConfig, got {type(config).__name__}")
    load_kernels(x_TD.device)
    return config or default_config(x_TD.device)


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
    cfg = check_inputs(x_TD, expert_TK, gate, fake, keep_TK, config)
    T, K = expert_TK.shape
    out_NO = output_buffer(out, (T * K, O), x_TD)
    layout = align_slots(expert_TK, keep_TK, E, cfg.block_m)
    grouped_gemm(x_TD, w_EOI, out_NO, layout, cfg, a_row_div=K)
    if keep_TK is not None:
        out_NO.masked_fill_(~keep_TK.reshape(-1, 1), 0.0)
    return out_NO


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
    cfg = check_inputs(x_TD, expert_TK, gate_TK, params, keep_TK, config)
    if out is not None:
        output_buffer(out, tuple(x_TD.shape), x_TD)
    return forward_no_grad(x_TD, expert_TK, gate_TK, params, keep_TK, cfg, out)


def forward_no_grad(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None,
    cfg: KernelConfig,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`fused_experts_v3` without the input checks (for callers that made them)."""
    T, K = expert_TK.shape
    layout = align_slots(expert_TK, keep_TK, params.n_experts, cfg.block_m)
    with torch.no_grad():
        h_NF, _, _ = fused_up(x_TD, params, layout, K, cfg, save_preact=False)
        y_ND = empty((T * K, x_TD.shape[1]), x_TD.dtype, x_TD.device)
        gate_N = gate_TK.reshape(-1).contiguous()
        grouped_gemm(h_NF, params.w2_EDF, y_ND, layout, cfg, a_row_div=1, scale_N=gate_N)
        return sum_over_k(y_ND, T, K, keep_TK, out)
