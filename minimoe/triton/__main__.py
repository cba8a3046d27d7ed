"""Run one rung of the kernel ladder on a small shape: check it against the float64 oracle, time it.

    TRITON_INTERPRET=1 python -m minimoe.triton 1     # on a CPU: version 1 in the interpreter
    python -m minimoe.triton 3 --T 4096 --D 2048 --F 768 --E 128 --K 8 --dtype bfloat16  # a GPU

Versions: 1 = matmul_v1 (one expert), 2 = grouped_gemm_v2 (every expert, first GEMM),
3 = fused_experts_v3 (the fused FFN forward), 4 = triton_moe forward + backward. Each is the
`main` of its rung (`python -m minimoe.triton.v2_grouped_gemm` runs the same as version 2).
The exit status is 1 when a result is outside the dtype's tolerance.
"""

from __future__ import annotations

import importlib
import sys

RUNGS = {"1": "v1_matmul", "2": "v2_grouped_gemm", "3": "v3_fused_experts", "4": "v4_backward"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in RUNGS:
        print(__doc__, file=sys.stderr)
        print(f"usage: python -m minimoe.triton {{{','.join(RUNGS)}}} [--T T] [--D D] [--F F] "
              "[--E E] [--K K] [--dtype float32|float16|bfloat16]", file=sys.stderr)  # fmt: skip
        return 2
    rung = importlib.import_module(f"minimoe.triton.{RUNGS[argv[0]]}")
    return rung.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
