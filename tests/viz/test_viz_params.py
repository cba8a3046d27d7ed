"""The parameter explorer draws `count_decoder_params` of the configuration its controls set."""

import pytest

from minimoe.params import PUBLISHED_CONFIGS, count_decoder_params
from minimoe.viz.params_explorer import params_explorer, split_params


def _drawn(px):
    experts, shared = px.figures["params"].data
    return {"active": experts.x[0] + shared.x[0], "total": experts.x[1] + shared.x[1],
            "experts_active": experts.x[0], "experts_total": experts.x[1]}  # fmt: skip


def test_split_params_adds_up_and_counts_each_expert_once():
    for config in PUBLISHED_CONFIGS.values():
        c = split_params(config)
        assert (c["total"], c["active"]) == count_decoder_params(**config)
        assert c["experts_total"] + c["shared"] == c["total"]
        assert c["experts_active"] + c["shared"] == c["active"]
        # SwiGLU experts: 3 * D * F weights each, in every layer
        one = 3 * config["hidden_size"] * config["intermediate_size"] * config["n_layers"]
        assert c["experts_total"] == config["n_experts"] * one
    c = split_params({**PUBLISHED_CONFIGS["Mixtral-8x7B"], "n_experts": 2, "top_k": 2})
    assert c["total"] == c["active"]  # K = E: every expert runs


def test_explorer_starts_at_the_published_model_and_follows_every_control():
    px = params_explorer()
    mixtral = PUBLISHED_CONFIGS["Mixtral-8x7B"]
    assert (_drawn(px)["total"], _drawn(px)["active"]) == count_decoder_params(**mixtral)
    assert "46.7" in px.summary.value and "12.9" in px.summary.value
    px.controls["n_experts"].value = 64
    px.controls["top_k"].value = 8
    px.controls["f_scale"].value = 0.125
    config = {**mixtral, "n_experts": 64, "top_k": 8, "intermediate_size": 14336 // 8}
    assert px.config == config
    assert _drawn(px) == {k: v for k, v in split_params(config).items() if k != "shared"}
    assert "64" in px.figures["params"].layout.title.text
    assert px.last_update_ms == px.last_update_ms  # timed (not NaN)


def test_k_never_exceeds_e_and_a_new_model_resets_the_sliders():
    px = params_explorer("Mixtral-8x7B")
    px.controls["top_k"].value = 8
    px.controls["n_experts"].value = 4
    assert px.controls["top_k"].value == 4 and px.controls["top_k"].max == 4
    assert px.config["top_k"] == 4
    px.controls["model"].value = "Qwen3-30B-A3B"
    qwen = PUBLISHED_CONFIGS["Qwen3-30B-A3B"]
    assert px.controls["n_experts"].value == 128 and px.controls["top_k"].value == 8
    assert px.config == qwen
    assert (_drawn(px)["total"], _drawn(px)["active"]) == count_decoder_params(**qwen)


def test_rejects_an_unknown_model():
    with pytest.raises(ValueError, match="model must be one of"):
        params_explorer("GPT-4")
