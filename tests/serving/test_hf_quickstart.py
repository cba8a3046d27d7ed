"""The seeds' HF quick-start as written: what it builds, its losses, and router_top_k ignored."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.slow  # builds transformers models (a few seconds on a quiet machine)


def test_quickstart_facts():
    from minimoe.serving.hf_quickstart import run_quickstart

    result = run_quickstart()
    full = result["full"]
    assert full["router_top_k_is_a_field"] is False
    assert full["router_top_k_attribute"] == 2  # kept, and read by nothing
    assert full["router_classes"] == ["SwitchTransformersTop1Router"]
    assert len(full["sparse_blocks"]) == 6  # 3 in the encoder, 3 in the decoder
    assert "decoder_start_token_id" in full["labels_forward_error_as_written"]
    losses = result["losses"]
    for name in (
        "loss",
        "encoder_z_loss",
        "encoder_aux_loss",
        "decoder_z_loss",
        "decoder_aux_loss",
    ):
        assert math.isfinite(losses[name]) and losses[name] > 0
    # the Switch balancing loss is >= 1 (1 at perfect balance) for top-1 dispatch
    assert losses["encoder_aux_loss"] >= 1.0 and losses["decoder_aux_loss"] >= 1.0
    for top_k, row in result["top_k_experiment"].items():
        assert row["max_abs_logit_diff_vs_top_k_1"] == 0.0, top_k
        assert row["max_experts_per_token"] == 1, top_k
