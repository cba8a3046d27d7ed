"""Tile sizes of the Triton kernels: `KernelConfig`, a default, and a small table of tuned ones.

A config fixes the tile one program computes (BLOCK_M rows x BLOCK_N output columns, stepping
BLOCK_K along the reduction), how programs are ordered (GROUP_SIZE_M row blocks share their
weight tiles while they are in the L2 cache), and how the compiler schedules a program
(num_warps, num_stages of software pipelining). The best values depend on the GPU and on how
many rows each expert gets: at decode (T*K/E of a few rows) the kernel streams weights, and a
small BLOCK_M wastes no work on padding; at prefill it is a matmul and large tiles reuse data.

The "tuned" table holds starting points chosen by that reasoning and by the sizes vLLM's tuned
fused-MoE tables use for similar shapes (vllm/model_executor/layers/fused_moe/configs): they have
not yet been re-measured for these kernels on a GPU. `python -m minimoe.bench --impls triton
triton-tuned` compares them with the default.

Left out: an autotuner (`triton.autotune` compiles every candidate on first use, minutes on a
GPU and hours in the interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minimoe.validate import check_device, check_int


def _power_of_two(n: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options shared by the grouped-GEMM kernels.

    Args:
        block_m: rows per program (also the padding unit of each expert's rows); >= 16.
        block_n: output columns per program; >= 16.
        block_k: step along the reduction dimension; >= 16.
        group_size_m: row blocks visited before moving to the next column block (L2 reuse).
        num_warps: warps per program (GPU only).
        num_stages: software-pipelining depth (GPU only).
    """

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    group_size_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if not _power_of_two(value) or value < 16:
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot), got {value!r}")
        if not isinstance(self.group_size_m, int) or self.group_size_m < 1:
            raise ValueError(f"group_size_m must be a positive int, got {self.group_size_m!r}")
        if not _power_of_two(self.num_warps) or self.num_warps > 32:
            raise ValueError(f"num_warps must be a power of two <= 32, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be a positive int, got {self.num_stages!r}")


DEFAULT = KernelConfig()
# the CPU interpreter runs each program in Python: small tiles, and no GPU-only options matter
INTERPRETER = KernelConfig(block_m=16, block_n=32, block_k=32, group_size_m=1, num_warps=1,
                           num_stages=1)  # fmt: skip
# by rows per expert (T*K/E, balanced): decode streams weights; prefill is a matmul
DECODE = KernelConfig(block_m=16, block_n=64, block_k=128, group_size_m=1, num_warps=4,
                      num_stages=4)  # fmt: skip
MEDIUM = KernelConfig(block_m=64, block_n=128, block_k=64, group_size_m=8, num_warps=4,
                      num_stages=3)  # fmt: skip
PREFILL = KernelConfig(block_m=128, block_n=128, block_k=64, group_size_m=8, num_warps=8,
                       num_stages=3)  # fmt: skip

# (D, F, E, K) -> [(largest rows per expert, config)], first match wins
TUNED: dict[tuple[int, int, int, int], list[tuple[float, KernelConfig]]] = {
    (4096, 14336, 8, 2): [(16, DECODE), (256, MEDIUM), (float("inf"), PREFILL)],  # Mixtral
    (2048, 1024, 64, 8): [(16, DECODE), (512, MEDIUM), (float("inf"), PREFILL)],  # OLMoE
    (2048, 768, 128, 8): [(16, DECODE), (512, MEDIUM), (float("inf"), PREFILL)],  # Qwen3-30B
}


def available_configs() -> dict[str, KernelConfig]:
    """Every named config: "default", "interpreter", "decode", "medium", "prefill"."""
    return dict(default=DEFAULT, interpreter=INTERPRETER, decode=DECODE, medium=MEDIUM,
                prefill=PREFILL)  # fmt: skip


def default_config(device: torch.device | str) -> KernelConfig:
    """`DEFAULT` on a GPU, `INTERPRETER` (small tiles) on the CPU."""
    return INTERPRETER if check_device("device", device).type == "cpu" else DEFAULT


def tuned_config(
    T: int, D: int, F: int, E: int, K: int, device: torch.device | str
) -> KernelConfig:
    """The tuned config for a shape and token count (the CPU always gets `INTERPRETER`).

    Shapes in `TUNED` use their table; other shapes the same rule by rows per expert
    (<= 16: DECODE, <= 512: MEDIUM, else PREFILL).
    """
    T, D, F = check_int("T", T, low=0), check_int("D", D, low=1), check_int("F", F, low=1)
    E = check_int("E", E, low=1)
    check_int("K", K, low=1, high=E)
    if check_device("device", device).type == "cpu":
        return INTERPRETER
    rows = T * K / E
    table = TUNED.get((D, F, E, K), [(16, DECODE), (512, MEDIUM), (float("inf"), PREFILL)])
    return next(cfg for limit, cfg in table if rows <= limit)
