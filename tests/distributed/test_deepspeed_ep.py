"""DeepSpeed 0.19.8's MoE with ep_size=2, on two gloo processes, against minimoe's expert-parallel
layer with the same weights (minimoe.distributed.deepspeed_parity)."""

from __future__ import annotations

import pytest

pytest.importorskip("deepspeed")

from minimoe.distributed.deepspeed_parity import deepspeed_both_k  # noqa: E402
from minimoe.distributed.launch import launch  # noqa: E402

pytestmark = pytest.mark.slow


def test_deepspeed_moe_ep2_matches_minimoe() -> None:
    results = launch(deepspeed_both_k, 2, wall_timeout_s=400.0)
    for rank, by_k in enumerate(results):
        assert [r["top_k"] for r in by_k] == [1, 2]
        for r in by_k:
            where = f"rank {rank}, k={r['top_k']}"
            assert r["output_abs_max"] > 1e-2, where  # a real output, not zeros on both sides
            assert r["output"] <= 1e-5, f"{where}: outputs differ by {r['output']:.2e}"
            assert r["l_aux"] <= 1e-6, f"{where}: l_aux differs by {r['l_aux']:.2e}"
            assert r["exp_counts_equal"], f"{where}: expert counts differ"
            assert r["grad"] <= 1e-5, f"{where}: gradients differ by {r['grad']:.2e}"
