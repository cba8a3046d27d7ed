import pytest

from minimoe import MoEConfig


def test_defaults_are_valid_and_frozen():
    cfg = MoEConfig(d_model=8, d_ff=16, n_experts=4)
    assert cfg.top_k == 2 and cfg.gating == "mixtral" and cfg.capacity_formula == "dropless"
    with pytest.raises(AttributeError):
        cfg.top_k = 3  # frozen


def test_replace_validates_again():
    cfg = MoEConfig(d_model=8, d_ff=16, n_experts=4)
    assert cfg.replace(top_k=4).top_k == 4
    with pytest.raises(ValueError, match=r"top_k must be in \[1, n_experts=4\], got 5"):
        cfg.replace(top_k=5)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"top_k": 0}, "top_k must be in"),
        ({"d_model": 0}, "d_model must be a positive int"),
        ({"d_ff": -3}, "d_ff must be a positive int"),
        ({"capacity_factor": 0.0}, "capacity_factor must be > 0"),
        ({"capacity_factor": -1.0}, "capacity_factor must be > 0"),
        ({"gating": "softmax"}, "gating='softmax' is not one of"),
        ({"activation": "tanh"}, "activation='tanh' is not one of"),
        ({"drop_policy": "lifo"}, "drop_policy='lifo' is not one of"),
        ({"capacity_formula": "switch"}, "needs expert_capacity"),
        ({"n_groups": 3}, "n_groups=3 must divide n_experts=4"),
        ({"n_groups": 0}, "n_groups must be an int in"),
        ({"n_groups": 2, "topk_groups": 1}, "group-limited top-k"),
        ({"min_capacity": -1}, "min_capacity must be an int >= 0"),
        ({"group_size": 0}, "group_size must be a positive int"),
    ],
)
def test_bad_configs_raise_clear_errors(changes, message):
    base = {"d_model": 8, "d_ff": 16, "n_experts": 4, "top_k": 2}
    with pytest.raises(ValueError, match=message):
        MoEConfig(**{**base, **changes})


def test_group_limited_needs_enough_experts_in_kept_groups():
    with pytest.raises(ValueError, match="top_k exceeds"):
        MoEConfig(
            d_model=8, d_ff=8, n_experts=8, top_k=3, gating="deepseek_v3", n_groups=4, topk_groups=1
        )
    MoEConfig(
        d_model=8, d_ff=8, n_experts=8, top_k=2, gating="deepseek_v3", n_groups=4, topk_groups=1
    )
