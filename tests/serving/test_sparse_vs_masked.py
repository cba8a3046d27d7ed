"""Masked experts (every expert on every token) give the sparse result; the measurement runs."""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams
from minimoe.reference import reference_moe
from minimoe.serving.sparse_vs_masked import masked_moe, measure


def test_masked_equals_reference_with_drops_and_edge_cases():
    gen = torch.Generator().manual_seed(0)
    E, D, F = 4, 6, 5
    for activation in ("swiglu", "gelu", "relu"):
        w3 = torch.randn(E, F, D, generator=gen) if activation == "swiglu" else None
        params = ExpertParams(
            torch.randn(E, F, D, generator=gen), torch.randn(E, D, F, generator=gen), w3, activation
        )
        for T, K in [(7, 2), (0, 2), (5, 4), (3, 1)]:
            x = torch.randn(T, D, generator=gen)
            expert = torch.argsort(torch.rand(T, E, generator=gen), dim=1)[:, :K]  # distinct
            gate = torch.rand(T, K, generator=gen)
            keep = torch.rand(T, K, generator=gen) > 0.3
            want = reference_moe(x.double(), expert, gate.double(), _double(params), keep)
            got = masked_moe(x.double(), expert, gate.double(), _double(params), keep)
            assert got.shape == (T, D)
            assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()
        all_on_one = torch.zeros(4, 2, dtype=torch.int64)
        all_on_one[:, 1] = 1
        x = torch.randn(4, D, generator=gen)
        gate = torch.rand(4, 2, generator=gen)
        want = reference_moe(x.double(), all_on_one, gate.double(), _double(params))
        assert torch.allclose(
            masked_moe(x.double(), all_on_one, gate.double(), _double(params)), want
        )


def _double(p: ExpertParams) -> ExpertParams:
    return ExpertParams(
        p.w1_EFD.double(),
        p.w2_EDF.double(),
        None if p.w3_EFD is None else p.w3_EFD.double(),
        p.activation,
    )


def test_measure_rows():
    rows = measure((1, 2), prefill_len=4, d_model=16, d_ff=16, repeats=1)
    assert [(r["phase"], r["batch"], r["tokens"]) for r in rows] == [
        ("decode", 1, 1), ("decode", 2, 2), ("prefill", 1, 4), ("prefill", 2, 8),
    ]  # fmt: skip
    for r in rows:
        assert r["max_abs_diff"] < 1e-4 and r["masked_ms"] > 0 and r["sparse_ms"] > 0
    assert rows[0]["experts_touched"] == 2  # one token, K = 2
