"""The same expert-parallel code on GPUs with NCCL (skipped without two CUDA devices), and the
backend choice that the launcher makes from the device."""

from __future__ import annotations

import pytest
import torch

from minimoe.distributed.launch import backend_for, launch
from minimoe.distributed.verify import Case, check_cases


def test_backend_follows_the_device() -> None:
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == "nccl"
    assert backend_for("cuda:1") == "nccl"


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA devices (NCCL refuses two ranks on one GPU)",
)
def test_two_gpus_nccl_match_one_process() -> None:
    cases = (Case("dropless on CUDA", device="cuda"), Case("capacity on CUDA", device="cuda",
             dispatch="capacity", tokens=12))  # fmt: skip
    results = launch(check_cases, 2, (cases,), device="cuda")
    for rank, by_case in enumerate(results):
        for name, res in by_case.items():
            for what, diff in res["max_abs_diff"].items():
                # TF32 may be on for CUDA matmuls: a looser bound than on a CPU
                assert diff <= 1e-3, f"rank {rank}, {name}: {what} differs by {diff:.2e}"
