"""Run one version of the kernel ladder on a small shape, check it against the oracle, time it.

    TRITON_INTERPRET=1 python -m minimoe.triton 1     # on a CPU: version 1 in the interpreter
    python -m minimoe.triton 3 --T 4096 --D 2048 --F 768 --E 128 --K 8 --dtype bfloat16  # a GPU

Versions: 1 = matmul_v1 (one expert), 2 = grouped_gemm_v2 (every expert, first GEMM),
3 = fused_experts_v3 (the fused FFN forward), 4 = triton_moe forward + backward.
"""

from __future__ import annotations

import argparse
import time

import torch

import minimoe.triton as mt
from minimoe.reference import reference_moe
from minimoe.testing import make_experts_inputs, max_diff, outputs_and_grads

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimoe.triton", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("version", type=int, choices=[1, 2, 3, 4])
    for name, default in [("T", 8), ("D", 32), ("F", 32), ("E", 4), ("K", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    T, D, F, E, K = args.T, args.D, args.F, args.E, args.K
    x, e, g, params = make_experts_inputs(T, D, F, E, K, DTYPES[args.dtype], routing="topk")
    x, e, g = x.to(device), e.to(device), g.to(device)
    params = params._replace(**{n: getattr(params, n).to(device) for n in ("w1_EFD", "w2_EDF", "w3_EFD")})  # fmt: skip
    if args.version == 1:
        run, want = lambda: mt.matmul_v1(x, params.w1_EFD[0].t()), x.double() @ params.w1_EFD[0].double().t()  # fmt: skip
    elif args.version == 2:
        run = lambda: mt.grouped_gemm_v2(x, params.w1_EFD, e)  # noqa: E731
        want = torch.einsum("nd,nfd->nf", x.double().repeat_interleave(K, 0), params.w1_EFD.double()[e.reshape(-1)])  # fmt: skip
    elif args.version == 3:
        run, want = lambda: mt.fused_experts_v3(x, e, g, params), reference_moe(x, e, g, params)
    else:
        run = lambda: outputs_and_grads(mt.triton_moe, x, e, g, params)[0]  # noqa: E731
        want = reference_moe(x, e, g, params)
    out = run()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 3 * 1e3
    abs_err, rel_err = max_diff(out, want)
    print(f"version {args.version} on {device} ({args.dtype}), T={T} D={D} F={F} E={E} K={K}: "
          f"max abs diff {abs_err:.3g} vs the float64 oracle, {ms:.3g} ms per call")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
