import math

import pytest
import torch

from minimoe import route
from minimoe.testing import assert_close


def test_hand_computed_switch_and_mixtral():
    logits = torch.tensor([[1.0, 2.0, 0.0, 3.0]])
    p = torch.softmax(logits, -1)[0]
    sw = route(logits, 2, "switch")
    assert sw.expert_TK.tolist() == [[3, 1]]
    assert_close(sw.gate_TK, torch.stack([p[3], p[1]])[None], name="switch gates")
    mx = route(logits, 2, "mixtral")
    first = 1 / (1 + math.exp(-1.0))  # e^3 / (e^3 + e^2)
    assert_close(mx.gate_TK, torch.tensor([[first, 1 - first]]), name="mixtral gates")
    assert_close(mx.probs_TE, p[None], name="probs")


def test_mixtral_equals_shazeer_and_differs_from_switch():
    torch.manual_seed(0)
    logits = torch.randn(64, 8)
    mx, sh, sw = (route(logits, 2, g) for g in ("mixtral", "shazeer", "switch"))
    assert torch.equal(mx.expert_TK, sh.expert_TK)
    assert_close(mx.gate_TK, sh.gate_TK, atol=1e-6, name="mixtral vs shazeer")
    assert torch.equal(mx.expert_TK, sw.expert_TK)
    assert (mx.gate_TK - sw.gate_TK).abs().max() > 0.1  # switch does not renormalise


def test_shazeer_top1_gives_router_no_gradient():
    logits = torch.randn(16, 4, requires_grad=True)
    r = route(logits, 1, "shazeer")
    assert torch.all(r.gate_TK == 1.0)
    r.gate_TK.sum().backward()
    assert torch.all(logits.grad == 0)  # Megatron-LM #894: the task loss cannot train the router
    logits2 = logits.detach().clone().requires_grad_()
    route(logits2, 1, "switch").gate_TK.sum().backward()
    assert logits2.grad.abs().sum() > 0


def test_deepseek_bias_changes_choice_not_weights():
    logits = torch.tensor([[0.0, 1.0, -1.0, 0.5]])
    bias = torch.tensor([0.0, 0.0, 2.0, 0.0])
    r = route(logits, 2, "deepseek_v3", bias_E=bias, routed_scaling_factor=2.5)
    assert sorted(r.expert_TK[0].tolist()) == [1, 2]
    s = torch.sigmoid(logits[0])
    expected = torch.stack([s[2], s[1]]) if r.expert_TK[0, 0] == 2 else torch.stack([s[1], s[2]])
    assert_close(r.gate_TK[0], expected / expected.sum() * 2.5, name="deepseek gates")
    assert_close(r.probs_TE, torch.sigmoid(logits), name="sigmoid scores")


def test_group_limited_topk_stays_in_the_best_groups():
    torch.manual_seed(1)
    logits = torch.randn(32, 8)
    r = route(logits, 2, "deepseek_v3", n_groups=4, topk_groups=1)
    s = torch.sigmoid(logits).view(32, 4, 2).sum(-1)  # top-2 of 2 experts = both
    best_group = s.argmax(-1)
    assert torch.equal(r.expert_TK.div(2, rounding_mode="floor").sort(-1).values[:, 0], best_group)
    assert torch.equal(r.expert_TK // 2, best_group[:, None].expand(32, 2))


def test_router_runs_in_float32_for_low_precision_logits():
    logits = torch.randn(8, 4).to(torch.bfloat16)
    r = route(logits, 2, "mixtral")
    assert r.gate_TK.dtype == torch.float32 and r.probs_TE.dtype == torch.float32


def test_selection_noise_changes_choice_but_not_the_weight_formula():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    noise = torch.tensor([[0.0, 5.0, 0.0]])
    r = route(logits, 1, "switch", select_noise_TE=noise)
    assert r.expert_TK.tolist() == [[1]]
    assert_close(r.gate_TK, torch.softmax(logits, -1)[:, 1:2], name="gate from clean logits")


def test_k_equals_e_and_empty_input():
    logits = torch.randn(5, 3)
    r = route(logits, 3, "mixtral")
    assert sorted(r.expert_TK[0].tolist()) == [0, 1, 2]
    assert_close(r.gate_TK.sum(-1), torch.ones(5), name="weights sum")
    empty = route(torch.zeros(0, 4), 2, "switch")
    assert empty.expert_TK.shape == (0, 2) and empty.gate_TK.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 5}, "top_k must be in"),
        ({"top_k": 0}, "top_k must be in"),
        ({"top_k": 2, "gating": "topk"}, "is not one of"),
        ({"top_k": 2, "bias_E": torch.zeros(4)}, "selection bias"),
        ({"top_k": 2, "n_groups": 2}, "group-limited"),
    ],
)
def test_bad_routing_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        route(torch.randn(3, 4), **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        route(torch.randn(4), 1)
