"""`python -m minimoe.bench`: the experts implementations side by side, against HF and a dense FFN.

    python -m minimoe.bench --quick --json results/cpu/quick.json   # about 2 minutes on 2 cores
    python -m minimoe.bench --json results/cpu/full.json            # the whole sweep

Compares minimoe's loop, einsum, padded batched matmul and grouped matmul (and its Triton
kernels when present) with HF transformers' own experts backends (eager, batched_mm,
grouped_mm) on the same weights and routing, and with a dense FFN of the same useful FLOPs.
What is timed and how: `minimoe.bench.cli` and `minimoe.bench.timing`; the implementations:
`minimoe.bench.impls`; the ratios and the targets: `minimoe.bench.report`.
Benchmarks are programs, never timed tests.
"""

from minimoe.bench.cli import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]
