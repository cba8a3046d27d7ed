"""The GPU benchmark's pure parts, on the CPU: FLOP and byte counts, the roofline columns, the
target report, and the forward + backward closures (run on tiny CPU tensors)."""

from __future__ import annotations

import pytest
import torch

import minimoe
from minimoe.bench import gpu
from minimoe.bench.report import markdown
from minimoe.testing import make_experts_inputs

CEILINGS = dict(matmul_tflops=800.0, copy_tbps=3.0, matmul_shape=[8192] * 3, copy_bytes=2**30)


def test_flops_match_the_accounting_model():
    assert gpu.moe_flops(1, 2, 3, 1) == 2 * 1 * 1 * 3 * 2 * 3 == 36
    assert gpu.moe_flops(5, 8, 4, 2, "gelu") == 2 * 5 * 2 * 2 * 8 * 4
    for T, D, F, E, K in [(1, 4096, 14336, 8, 2), (4096, 2048, 768, 128, 8)]:
        assert (
            gpu.moe_flops(T, D, F, K) == minimoe.moe_cost("grouped_mm", T, D, F, E, K).useful_flops
        )
    with pytest.raises(ValueError):
        gpu.n_mats("relu")


def test_touched_experts_and_bytes():
    expert_TK = torch.tensor([[0, 3], [3, 0], [5, 0]])
    assert gpu.touched_experts(expert_TK, 8) == 3
    assert gpu.touched_experts(torch.zeros(0, 2, dtype=torch.long), 8) == 0
    # Mixtral, one token, two experts, bf16: 2 * 3 * 4096 * 14336 * 2 bytes
    assert gpu.touched_weight_bytes(2, 4096, 14336, 2) == 704_643_072
    assert gpu.touched_weight_bytes(1, 10, 20, 4, "gelu") == 1600


def test_point_metrics_hand_computed():
    # 1 ms for T=1000, D=100, F=100, K=1: 2*1000*3*100*100 = 6e7 FLOPs -> 0.06 TFLOP/s
    m = gpu.point_metrics(1.0, 1000, 100, 100, 1, touched_bytes=3_000_000_000, ceilings=CEILINGS)
    assert m["tbps_touched"] == pytest.approx(3.0)  # 3 GB in 1 ms
    assert m["pct_copy"] == pytest.approx(100.0)
    assert m["pct_matmul"] == pytest.approx(100 * 0.06 / 800)


def _row(impl, T, ms, **extra):
    return dict(impl=impl, shape="mixtral", routing="uniform", T=T, ms_median=ms, **extra)


def test_target_report_met_and_missed():
    rows = [
        _row("triton", 8192, 10.0, pct_matmul=60.0, ms_fwd_bwd=30.0),
        _row("triton-tuned", 8192, 9.0, pct_matmul=66.0, ms_fwd_bwd=35.0),
        _row("grouped_mm", 8192, 12.0, pct_matmul=50.0, ms_fwd_bwd=31.0),
        _row("triton", 1, 1.0, pct_copy=80.0),
        _row("triton-tuned", 1, 1.2, pct_copy=70.0),
    ]
    lines = gpu.target_report(rows, CEILINGS)
    assert "800 TFLOP/s" in lines[0] and "3 TB/s" in lines[0]
    large, small, fb = lines[1:]
    assert "met" in large and "triton-tuned 66% of matmul, 1.33x grouped_mm" in large
    assert small.endswith("met (mixtral/uniform T=1: triton 80% of copy)")
    assert "met" in fb and "triton 1.03x grouped_mm" in fb
    slow = [_row("triton", 4096, 20.0, pct_matmul=30.0), _row("grouped_mm", 4096, 10.0)]
    slow.append(_row("triton", 16, 1.0, pct_copy=10.0))
    lines = gpu.target_report(slow, CEILINGS)
    assert "missed at 1 of 1 points" in lines[1] and "0.50x grouped_mm" in lines[1]
    assert "missed at 1 of 1" in lines[2] and lines[3].endswith("not measured")


def test_report_has_a_gpu_section_only_for_gpu_runs():
    row = dict(impl="triton", shape="tiny", routing="uniform", T=1, ms_median=1.0, tflops=1.0,
               pct_matmul=1.0, tbps_touched=2.0, pct_copy=50.0, ms_fwd_bwd=3.0)  # fmt: skip
    result = dict(
        machine=dict(device="cuda", device_name="GPU", cpu_count=1, torch="x", torch_threads=1,
                     transformers=None),
        settings=dict(dtype="bfloat16", repeats=1, shapes={"tiny": [32, 64, 4, 2]}),
        rows=[row], skipped=[], elapsed_s=1.0,
    )  # fmt: skip
    assert "GPU targets" not in markdown(result)
    md = markdown(dict(result, ceilings=CEILINGS))
    assert "## GPU targets\n" in md and "| tiny | uniform | 1 | triton | 1 |" in md


def test_forward_backward_closures_give_every_gradient():
    x, e, g, p = make_experts_inputs(6, 8, 12, 4, 2, torch.float32, seed=3)
    steps = gpu.forward_backward_fns({"grouped_mm": minimoe.grouped_mm_moe}, x, e, g, p)
    grads = steps["grouped_mm"]()
    assert [t.shape for t in grads] == [x.shape, g.shape, p.w1_EFD.shape, p.w2_EDF.shape,
                                        p.w3_EFD.shape]  # fmt: skip
    assert not x.requires_grad  # the caller's tensors are left alone
    samples = gpu.forward_backward_samples(["grouped_mm", "loop"], (8, 12, 4, 2), x, e, g, p, 2, 1)
    assert list(samples) == ["grouped_mm"] and len(samples["grouped_mm"]) == 2


def test_ceilings_measure_on_any_device():
    c = gpu.measure_ceilings(torch.device("cpu"), n=64, copy_bytes=2**20, repeats=2)
    assert c["matmul_tflops"] > 0 and c["copy_tbps"] > 0 and c["matmul_shape"] == [64, 64, 64]
