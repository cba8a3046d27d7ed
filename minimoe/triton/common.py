"""What every rung of the Triton ladder shares: Triton itself (or a clear error), the program
order of a tiled kernel, the checks a launcher makes, and the validate-then-time command.

Names in the kernels follow the Triton tutorials: `*_ptr` for pointers, `stride_xy` for the step
in elements along axis y of tensor x, BLOCK_SIZE-like constants in capitals (constexpr: fixed at
compile time, one compiled kernel per value). Each program computes a BLOCK_M x BLOCK_N tile of
output and accumulates in float32 whatever the input dtype.

Where the kernels run: on CUDA tensors in float32 (products in full float32: TF32 off), float16
or bfloat16; on CPU tensors through Triton's interpreter in float32 or float16 only (the
interpreter computes bfloat16 wrongly, so it is refused), with tiny shapes (it runs each program
in Python, about a thousand times slower than the GPU). `triton.jit` reads TRITON_INTERPRET when
a kernel is defined, i.e. when its rung's module is first imported: set TRITON_INTERPRET=1 in the
environment before that.

Without Triton (or off Linux) every rung still imports: `triton.jit` is then a stand-in that
leaves each kernel a plain, never-launched function, and every launcher calls `require_triton`
first, which says what is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from minimoe.experts import ExpertParams, validate_experts_inputs
from minimoe.testing import assert_close, make_experts_inputs, max_diff
from minimoe.triton.config import KernelConfig, default_config

TRITON_NEEDS = "Triton needs Linux (and a CUDA GPU, or TRITON_INTERPRET=1 on CPU)"


class _NoTriton:
    """Stands in for the `triton` module where it cannot be imported: `@triton.jit` leaves the
    kernel a plain function, which no launcher reaches (they call `require_triton` first)."""

    available = False

    @staticmethod
    def jit(fn: Callable) -> Callable:
        return fn


try:
    import triton
    import triton.language as tl
except ImportError:
    triton, tl = _NoTriton(), None


@triton.jit
def tile_ids(pid, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """The (row block, column block) of program `pid`, in grouped order.

    Row-major order would sweep all column blocks of row block 0, then of row block 1, ...: each
    column block of the weights is reloaded for every row block. Grouped order visits
    GROUP_SIZE_M row blocks down one column block before moving right, so a weight tile is read
    from DRAM once and then served from L2 to the next GROUP_SIZE_M - 1 programs.
    """
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)  # the last group may be short
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


# True when the kernels were defined for Triton's CPU interpreter (TRITON_INTERPRET=1 was set
# when they were defined): they then run on CPU tensors, and only there
INTERPRETED = type(tile_ids).__name__ == "InterpretedFunction"


def require_triton(device: torch.device) -> None:
    """Raise a clear error unless the kernels can run on `device` (every launcher calls this)."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"{TRITON_NEEDS}; this machine runs {sys.platform}")
    if isinstance(triton, _NoTriton):
        raise ImportError(f"{TRITON_NEEDS}; triton is not installed (pip install triton)")
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            f"{TRITON_NEEDS}. These tensors are on the CPU but the kernels were defined for a "
            "GPU: set TRITON_INTERPRET=1 in the environment before the kernels are defined (before "
            "the first import of a kernel from minimoe.triton), e.g. `TRITON_INTERPRET=1 python "
            "...`, or os.environ['TRITON_INTERPRET'] = '1' in a notebook's first cell, then "
            "restart the kernel"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"the Triton kernels run on a CUDA GPU or the CPU, not on {device.type}")


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


def check_experts_inputs(
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
    require_triton(x_TD.device)
    return config or default_config(x_TD.device)


def output_buffer(
    out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """`out` checked to be a `shape` tensor in `like`'s dtype and device, or a new one if None.

    A new buffer is `torch.empty`: a kernel must write every element of it. (Tests check that by
    turning on torch's `fill_uninitialized_memory`, which makes every empty float tensor NaN.)
    """
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"out must be a {like.dtype} {tuple(shape)} tensor on {like.device}")
    return out


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact float32 products for float32 ("ieee": TF32 off)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_options(cfg: KernelConfig) -> dict:
    """The tile and the compiler's options of a `KernelConfig`, as launch keywords."""
    return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # fmt: skip


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (triton.cdiv, without needing Triton)."""
    return -(-a // b)


# ---- the command every rung's `__main__` runs: check against the float64 oracle, then time ----

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# |got - oracle| <= TOL * (1 + |oracle|) elementwise; the tests' tolerances for each dtype
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def ladder_inputs(
    version: int, argv: list[str] | None
) -> tuple[argparse.Namespace, tuple[torch.Tensor, torch.Tensor, torch.Tensor, ExpertParams]]:
    """Parse a rung's command line; seeded experts-step inputs on the GPU if there is one."""
    p = argparse.ArgumentParser(
        prog=f"python -m minimoe.triton {version}",
        description=f"Check version {version} of the kernel ladder against the float64 oracle, "
        "then time it. On a CPU, prefix the command with TRITON_INTERPRET=1.",
    )
    for name, default in [("T", 8), ("D", 32), ("F", 32), ("E", 4), ("K", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    x, e, g, params = make_experts_inputs(
        args.T, args.D, args.F, args.E, args.K, DTYPES[args.dtype], routing="topk"
    )
    move = lambda t: None if t is None else t.to(args.device)  # noqa: E731
    params = params._replace(**{n: move(getattr(params, n)) for n in ("w1_EFD", "w2_EDF", "w3_EFD")})  # fmt: skip
    return args, (move(x), move(e), move(g), params)


def validate_then_time(
    version: int,
    args: argparse.Namespace,
    run: Callable[[], list[torch.Tensor]],
    want: list[torch.Tensor],
    repeats: int = 3,
) -> int:
    """Run once and compare every result with the oracle's; then time `repeats` runs.

    Prints one line; returns 0, or 1 when a result is outside the dtype's tolerance.
    """
    got = run()
    tol = TOL[DTYPES[args.dtype]]
    err = max((max_diff(a, b)[0] for a, b in zip(got, want)), default=0.0)
    failed = []
    for i, (a, b) in enumerate(zip(got, want)):
        try:
            assert_close(a, b, atol=tol, rtol=tol, name=f"result {i}")
        except AssertionError as why:
            failed.append(str(why))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / repeats * 1e3
    print(f"version {version} on {args.device} ({args.dtype}), T={args.T} D={args.D} F={args.F} "
          f"E={args.E} K={args.K}: max abs diff {err:.3g} vs the float64 oracle, "
          f"{ms:.3g} ms per call" + ("" if not failed else " FAILED: " + "; ".join(failed)))  # fmt: skip
    return 1 if failed else 0
