"""The cost-accuracy-performance comparison: its contenders, its memory accounting, and a short
end-to-end run (a few training steps) whose offloaded model must match the resident one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from minimoe.__main__ import main
from minimoe.lm.data import build_corpus
from minimoe.lm.model import LMConfig, TinyLM, count_params
from minimoe.lm.train import TrainConfig
from minimoe.serving.triangle import (
    LESSON_CONFIG,
    Contender,
    contenders,
    measure_triangle,
    memory_bytes,
    triangle_markdown,
)

SMALL = LMConfig(seq_len=16, d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=8)


def test_contenders_are_the_twins_and_variants_of_the_base():
    entries = contenders(LESSON_CONFIG)
    assert [c.kind for c in entries] == ["dense", "dense", "moe", "moe", "moe", "offloaded"]
    twin, wide, moe, k1, e16, off = (c.cfg for c in entries)
    E, K, F = 8, 2, 48
    assert twin.moe_every == 0 and twin.d_ff == K * F
    assert wide.moe_every == 0 and wide.d_ff == E * F
    assert moe == LESSON_CONFIG and off == LESSON_CONFIG
    assert k1.top_k == 1 and e16.n_experts == 2 * E
    assert entries[-1].cache_experts == 4  # a quarter of 2 layers x 8 experts
    # The twin runs the MoE's active weights; the wide model holds the MoE's total weights.
    sizes = {name: count_params(TinyLM(cfg)) for name, cfg in [("twin", twin), ("wide", wide)]}
    moe_total, moe_active = count_params(TinyLM(moe))
    router = 2 * E * 48  # one D x E router per MoE layer, active in the MoE only
    assert sizes["twin"][0] == moe_active - router
    assert sizes["wide"][0] == moe_total - router


def test_contenders_reject_what_cannot_be_compared():
    with pytest.raises(TypeError, match="LMConfig"):
        contenders("moe")
    with pytest.raises(ValueError, match="moe_every"):
        contenders(replace(SMALL, moe_every=0))
    with pytest.raises(ValueError, match="top_k=4"):
        contenders(replace(SMALL, top_k=4))
    with pytest.raises(ValueError, match="dropless"):
        contenders(replace(SMALL, capacity_formula="gshard"))
    with pytest.raises(ValueError, match="cache_experts"):
        contenders(SMALL, cache_experts=9)  # 2 layers x 4 experts = 8
    with pytest.raises(ValueError, match="cache_experts"):
        contenders(SMALL, cache_experts=0)


def test_memory_counts_weights_and_one_context_of_kv():
    model = TinyLM(SMALL)
    total, _ = count_params(model)
    kv = 2 * 2 * 16 * 16 * 4  # keys and values, 2 layers, 16 positions, D = 16, float32
    assert memory_bytes(model) == (total * 4, kv)
    # One SwiGLU expert holds 3 x D x F weights; offloaded, 3 of the 8 stay.
    expert = 3 * 16 * 8
    weights, kv_off = memory_bytes(model, 3)
    assert kv_off == kv
    assert weights == (total - 8 * expert + 3 * expert) * 4


@pytest.mark.slow
def test_measure_triangle_end_to_end():
    torch.set_num_threads(1)
    entries = contenders(SMALL, cache_experts=2)
    tcfg = TrainConfig(steps=3, batch_size=4, warmup=1, eval_every=0, eval_batches=1)
    rows = measure_triangle(
        entries, tcfg, corpus=build_corpus(), n_new=6, repeats=2, eval_batches=1, progress=False
    )
    assert [r.name for r in rows] == [c.name for c in entries]
    moe, off = rows[2], rows[5]
    assert off.same_text is True and moe.same_text is None
    assert off.val_loss == moe.val_loss  # the same weights
    assert off.total_params == moe.total_params and off.active_params == moe.active_params
    assert off.memory_bytes < moe.memory_bytes
    assert 0.0 <= off.hit_rate <= 1.0 and moe.hit_rate is None
    for r in rows:
        assert r.flops_per_token == 2 * r.active_params
        assert r.tokens_per_s >= r.tokens_per_s_median > 0
        assert r.tokens_per_s_wall > 0
        assert r.memory_bytes == r.weight_bytes + r.kv_bytes
        assert 0.0 < r.val_loss < 10.0
    assert rows[0].active_params < rows[1].active_params  # twin < wide
    table = triangle_markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "offloaded (2/8 cached)" in table


def test_measure_triangle_rejects_bad_input():
    off = Contender("offloaded", "offloaded", SMALL, 2)
    with pytest.raises(ValueError, match="resident model"):
        measure_triangle([off], progress=False)
    with pytest.raises(TypeError, match="Contender"):
        measure_triangle([SMALL], progress=False)
    with pytest.raises(ValueError, match="n_new"):
        measure_triangle(contenders(SMALL), n_new=0, progress=False)


@pytest.mark.slow
def test_triangle_command(tmp_path, capsys):
    out, md, png = tmp_path / "t.json", tmp_path / "t.md", tmp_path / "t.png"
    args = ["triangle", "--steps", "2", "--batch-size", "2", "--length", "3", "--repeats", "1"]
    assert main([*args, "--json", str(out), "--markdown", str(md), "--png", str(png),
                 "--no-progress"]) == 0  # fmt: skip
    payload = json.loads(out.read_text())
    assert len(payload["rows"]) == 6 and payload["train"]["steps"] == 2
    assert payload["rows"][5]["same_text"] is True
    assert "offloaded (4/16 cached)" in capsys.readouterr().out
    assert md.read_text().startswith("| model |") and png.stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["triangle", "--steps", "0"])
    with pytest.raises(SystemExit):
        main(["triangle", "--cache-experts", "17"])
