"""The named conventions of real systems, each against that system's own code (installed HF
transformers 5.x, DeepSpeed 0.19), with shapes of our own:

- jitter scopes: "router_and_experts" == HF Mixtral's block and HF Switch's sparse MLP (float32:
  its router jitters the caller's tensor in place) in training mode with the same noise;
  "router" == HF Switch's router logits, with clean tokens to the experts;
- DeepSpeed top2 second-expert sampling (`top2_2nd_expert_sampling=True`) == `route(...,
  clean_first_choice=True)` with the same Gumbel noise;
- GShard random routing of the second expert == HF NLLB-MoE `second_expert_policy="random"`;
- the Switch balancing loss per sequence == HF SwitchTransformers `load_balancing_loss_func`;
- ties: where DeepSpeed / HF and minimoe break exact ties differently, only tied entries differ.
(DeepSeek-V3 norm_topk_prob=False and ReLU experts are in tests/parity/test_parity_hf.py.)
"""

from __future__ import annotations

import pytest
import torch
from deepspeed.moe import sharded_moe
from transformers import MixtralConfig, NllbMoeConfig, SwitchTransformersConfig
from transformers.models.mixtral import modeling_mixtral as hf_mixtral
from transformers.models.nllb_moe.modeling_nllb_moe import NllbMoeTop2Router
from transformers.models.switch_transformers import modeling_switch_transformers as hf_switch

from minimoe import (
    MoEConfig,
    MoELayer,
    Router,
    assign_slots,
    expert_capacity,
    random_second_expert,
    reference_moe,
    renormalize_survivors,
    route,
)
from minimoe.testing import assert_close

D, F, E = 12, 20, 6
EPS = 0.3  # large, so a scope mix-up shows


# ----------------------------------------------------------------------------------------------
# jitter scopes
# ----------------------------------------------------------------------------------------------


def _mixtral(seed: int = 0):
    cfg = MixtralConfig(hidden_size=D, intermediate_size=F, num_local_experts=E,
                        num_experts_per_tok=2, router_jitter_noise=EPS,
                        experts_implementation="eager")  # fmt: skip
    hf = hf_mixtral.MixtralSparseMoeBlock(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hf.gate.weight.copy_(torch.randn(E, D, generator=g))
        hf.experts.gate_up_proj.copy_(torch.randn(E, 2 * F, D, generator=g) / D**0.5)
        hf.experts.down_proj.copy_(torch.randn(E, D, F, generator=g) / F**0.5)
    return hf


def _ours_like_mixtral(hf, scope: str) -> MoELayer:
    cfg = MoEConfig(D, F, E, top_k=2, noise="jitter", jitter_eps=EPS, jitter_scope=scope)
    ours = MoELayer(cfg)
    with torch.no_grad():
        ours.router.w_ED.copy_(hf.gate.weight)
        w1, w3 = hf.experts.gate_up_proj.chunk(2, dim=1)
        ours.experts.w1_EFD.copy_(w1)
        ours.experts.w3_EFD.copy_(w3)
        ours.experts.w2_EDF.copy_(hf.experts.down_proj)
    return ours


def test_jitter_router_and_experts_is_hf_mixtral() -> None:
    hf = _mixtral().train()
    x = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    y_hf = hf(x.clone())
    for scope, same in [("router_and_experts", True), ("router", False)]:
        ours = _ours_like_mixtral(hf, scope).train()  # built first: its init draws numbers
        torch.manual_seed(123)
        y_ours, _ = ours(x)
        if same:
            assert_close(y_ours, y_hf, atol=2e-5, rtol=1e-4, name="HF Mixtral, jitter in training")
        else:
            assert (y_ours - y_hf).abs().max() > 1e-2, "the router-only scope differs from HF"
    # evaluation mode: no jitter in either
    hf.eval()
    y_hf = hf(x.clone())
    y_ours, _ = _ours_like_mixtral(hf, "router_and_experts").eval()(x)
    assert_close(y_ours, y_hf, atol=2e-5, rtol=1e-4, name="HF Mixtral in eval")


def _switch(act: str = "relu"):
    cfg = SwitchTransformersConfig(d_model=D, d_ff=F, num_experts=E, expert_capacity=64,
                                   router_jitter_noise=EPS, dense_act_fn=act, dropout_rate=0.0)  # fmt: skip
    hf = hf_switch.SwitchTransformersSparseMLP(cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        hf.router.classifier.weight.copy_(torch.randn(E, D, generator=g))
        for e in range(E):
            hf.experts[f"expert_{e}"].wi.weight.copy_(torch.randn(F, D, generator=g) / D**0.5)
            hf.experts[f"expert_{e}"].wo.weight.copy_(torch.randn(D, F, generator=g) / F**0.5)
    return hf


def _ours_like_switch(hf, scope: str, S: int) -> MoELayer:
    cfg = MoEConfig(D, F, E, top_k=1, activation="relu", gating="switch", noise="jitter",
                    jitter_eps=EPS, jitter_scope=scope, capacity_formula="switch",
                    expert_capacity=64, group_size=S)  # fmt: skip
    ours = MoELayer(cfg)
    with torch.no_grad():
        ours.router.w_ED.copy_(hf.router.classifier.weight)
        for e in range(E):
            ours.experts.w1_EFD[e].copy_(hf.experts[f"expert_{e}"].wi.weight)
            ours.experts.w2_EDF[e].copy_(hf.experts[f"expert_{e}"].wo.weight)
    return ours


def test_hf_switch_jitters_in_place_so_its_experts_see_it() -> None:
    """float32 input: HF's router multiplies the caller's tensor in place; the experts then get
    the jittered tokens (our "router_and_experts"), and the caller's x has changed."""
    hf = _switch().train()
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(3))
    x_hf = x.clone()
    torch.manual_seed(7)
    y_hf = hf(x_hf)
    assert not torch.equal(x_hf, x), "HF Switch mutated its input"
    ours = _ours_like_switch(hf, "router_and_experts", 5).train()
    torch.manual_seed(7)
    y_ours, _ = ours(x)
    assert_close(y_ours, y_hf, atol=2e-5, rtol=1e-4, name="HF Switch, jitter in training")
    x_before = x.clone()
    _ours_like_switch(hf, "router_and_experts", 5).train()(x)
    assert torch.equal(x, x_before), "minimoe never mutates its input"


def test_jitter_router_scope_is_switch_paper_router_only() -> None:
    """Scope "router": the router logits are HF Switch's jittered logits, the experts get the
    clean tokens: y = experts(clean x) routed by the jittered logits."""
    hf = _switch().train()
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(9)
    _, _, logits_hf = hf.router(x.clone())
    ours = _ours_like_switch(hf, "router", 5).train()
    torch.manual_seed(9)
    logits_ours, _ = ours.router(x.reshape(-1, D))
    assert_close(logits_ours, logits_hf.reshape(-1, E), name="jittered router logits")
    torch.manual_seed(9)
    y, result = ours(x)
    r = result.routing
    y_expected = reference_moe(x.reshape(-1, D), r.expert_TK, result.gate_TK, ours.experts.params)
    assert_close(y.reshape(-1, D), y_expected, atol=1e-5, rtol=1e-4, name="clean experts")
    alone = Router(D, E, noise="jitter", jitter_eps=EPS, jitter_scope="router_and_experts")
    alone.train()
    with torch.no_grad():
        alone.w_ED.copy_(ours.router.w_ED)
    assert torch.equal(alone(x.reshape(-1, D))[0], x.reshape(-1, D) @ alone.w_ED.t()), (
        "a router of scope router_and_experts leaves the jitter to its caller"
    )


# ----------------------------------------------------------------------------------------------
# DeepSpeed top2: the second expert sampled on Gumbel-noisy logits, the first clean
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,E_,cf,seed", [(20, 5, 1.0, 0), (36, 7, 0.5, 1), (9, 3, 2.0, 2)])
def test_deepspeed_top2_second_expert_sampling(monkeypatch, T, E_, cf, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E_, generator=g)
    noise = -torch.log(-torch.log(torch.rand(T, E_, generator=g)))  # Gumbel(0, 1)
    monkeypatch.setattr(sharded_moe, "gumbel_rsample", lambda shape, device: noise.clone())
    _, combine_ds, _, _ = sharded_moe.top2gating(logits.clone(), cf, 0)  # sampling is the default
    r = route(logits, 2, "mixtral", select_noise_TE=noise, clean_first_choice=True)
    C = expert_capacity(T, E_, 2, "deepspeed", cf)
    keep, pos = assign_slots(r.expert_TK, r.gate_TK, E_, C, "k_major")
    gate = renormalize_survivors(r.gate_TK, keep)
    ours = torch.zeros(T, E_, C)
    t, k = torch.nonzero(keep, as_tuple=True)
    ours[t, r.expert_TK[t, k], pos[t, k]] = gate[t, k]
    assert combine_ds.shape[2] == C
    assert_close(ours, combine_ds, atol=1e-6, rtol=1e-5, name="combine weights")
    assert torch.equal(r.expert_TK[:, 0], logits.argmax(-1)), "first choice is the clean argmax"
    both_noisy = route(logits, 2, "mixtral", select_noise_TE=noise)
    assert not torch.equal(both_noisy.expert_TK, r.expert_TK), "noise on both choices differs"


def test_layer_gumbel_second_keeps_the_first_choice_clean() -> None:
    layer = MoELayer(MoEConfig(D, F, E, top_k=2, noise="gumbel_second")).train()
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    _, res = layer(x)
    assert torch.equal(res.routing.expert_TK[:, 0], res.routing.logits_TE.argmax(-1))
    clean = route(res.routing.logits_TE, 2).expert_TK[:, 1]
    assert not torch.equal(res.routing.expert_TK[:, 1], clean), "the second choice is sampled"


# ----------------------------------------------------------------------------------------------
# GShard random routing of the second expert (HF NLLB-MoE second_expert_policy="random")
# ----------------------------------------------------------------------------------------------


def test_random_second_expert_is_hf_nllb_moe() -> None:
    T = 30
    cfg = NllbMoeConfig(d_model=D, num_experts=E, expert_capacity=2 * T,
                        second_expert_policy="random", normalize_router_prob_before_dropping=False,
                        batch_prioritized_routing=False)  # fmt: skip
    hf = NllbMoeTop2Router(cfg).train()
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(6)) * 0.7
    torch.manual_seed(11)
    _, weights_TE = hf.route_tokens(logits.clone())
    hf_keep2 = (weights_TE > 0).sum(-1) == 2
    r = route(logits, 2, "switch")
    torch.manual_seed(11)
    keep2 = random_second_expert(r.gate_TK[:, 1])  # the raw softmax prob of the second expert
    assert torch.equal(keep2, hf_keep2)
    assert 0 < int(keep2.sum()) < T, "some second experts kept, some not"


def test_layer_random_second_expert_only_in_training() -> None:
    cfg = MoEConfig(D, F, E, top_k=2, second_expert_policy="random")
    layer = MoELayer(cfg)
    x = torch.randn(400, D, generator=torch.Generator().manual_seed(7))
    _, res = layer.eval()(x)
    assert res.keep_TK.all(), "evaluation keeps every second expert"
    _, res = layer.train()(x)
    assert res.keep_TK[:, 0].all()
    p2 = res.routing.probs_TE.gather(1, res.routing.expert_TK[:, 1:2])[:, 0]
    expected = float((2 * p2).clamp(max=1).mean())
    assert abs(float(res.keep_TK[:, 1].float().mean()) - expected) < 0.08


# ----------------------------------------------------------------------------------------------
# the Switch balancing loss per sequence
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,S", [(4, 6), (1, 9), (3, 5)])
def test_switch_loss_per_sequence_is_hf(B: int, S: int) -> None:
    cfg = MoEConfig(D, F, E, top_k=1, gating="switch", activation="relu", group_size=S,
                    aux_loss_per_group=True)  # fmt: skip
    layer = MoELayer(cfg).eval()
    x = torch.randn(B, S, D, generator=torch.Generator().manual_seed(B * S))
    x[0] += 2.0  # sequences with different preferences: pooled and per-sequence differ
    _, res = layer(x)
    probs_BSE = res.routing.probs_TE.view(B, S, E)
    hf = hf_switch.load_balancing_loss_func(probs_BSE, res.routing.expert_TK.view(B, S))
    assert_close(res.aux_loss, hf, name="per-sequence Switch loss")
    pooled = MoELayer(cfg.replace(aux_loss_per_group=False)).eval()
    pooled.load_state_dict(layer.state_dict())
    _, res_pooled = pooled(x)
    if B > 1:
        assert abs(float(res_pooled.aux_loss) - float(hf)) > 1e-4, "pooling is another loss"


# ----------------------------------------------------------------------------------------------
# ties
# ----------------------------------------------------------------------------------------------


def test_ties_top1_equal_logits_only_tied_tokens_differ() -> None:
    """DeepSpeed top1 takes `argmax` (the first of equal maxima); minimoe takes `topk`, whose
    choice among exact ties torch leaves unspecified. Only tokens with a tied maximum may differ,
    and both pick one of the tied experts."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randint(0, 3, (64, 8), generator=g).float()  # many exact ties
    ds_expert = logits.argmax(-1)
    ours = route(logits, 1, "switch").expert_TK[:, 0]
    tied = (logits == logits.max(-1, keepdim=True).values).sum(-1) > 1
    assert tied.any()
    assert torch.equal(ours[~tied], ds_expert[~tied]), "untied tokens agree"
    assert torch.equal(logits.gather(1, ours[:, None]), logits.max(-1, keepdim=True).values)
    l_aux, _, dispatch, _ = sharded_moe.top1gating(logits, 8.0, 0, use_rts=False)
    assert torch.equal(dispatch.any(-1).float().argmax(-1), ds_expert)


def test_ties_probs_policy_saturated_probabilities() -> None:
    """Saturated softmax probabilities (1.0 in float32) are exact ties for the "probs" drop
    policy: DeepSpeed's `topk` over a column of equal values keeps some subset, minimoe's stable
    sort keeps the earliest tokens. Only slots with a tied priority differ; the count kept per
    expert is the same."""
    T, E_, K = 24, 4, 2
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(T, E_, generator=g)
    logits[:, 0] += 40.0  # first choice expert 0, probability exactly 1.0 in float32
    r = route(logits, K, "mixtral")
    raw_TK = r.probs_TE.gather(1, r.expert_TK)
    _, _, dispatch, _ = sharded_moe.topkgating(logits, K, 0.5, 0, drop_policy="probs")
    C = dispatch.shape[2]
    keep, _ = assign_slots(r.expert_TK, raw_TK, E_, C, "probs")
    ds_keep = dispatch.any(-1).gather(1, r.expert_TK)
    differ = keep != ds_keep
    assert differ.any(), "this case has ties that the two orders break differently"
    for t, k in torch.nonzero(differ).tolist():
        e, p = int(r.expert_TK[t, k]), raw_TK[t, k]
        same_expert = r.expert_TK == e
        assert int((raw_TK[same_expert] == p).sum()) > 1, "a differing slot has a tied priority"
    for e in range(E_):
        on_e = r.expert_TK == e
        assert int(keep[on_e].sum()) == int(ds_keep[on_e].sum())


def test_ties_hf_topk_over_underflowed_probabilities() -> None:
    """HF Mixtral takes the top-k of the float32 probabilities; logits far below the maximum
    underflow to exactly 0, and which zero HF picks is unspecified. minimoe picks on the logits.
    Only choices with a zero (tied) probability differ, and they weigh 0 in both: same output."""
    hf = _mixtral().eval()
    ours = _ours_like_mixtral(hf, "router").eval()
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        big = torch.zeros(E, D)
        big[0, 0] = 400.0  # expert 0's logit dwarfs the others: their probabilities underflow
        hf.gate.weight.add_(big)
        ours.router.w_ED.add_(big)
    x[..., 0] = x[..., 0].abs() + 1.0
    _, w_hf, idx_hf = hf.gate(x.reshape(-1, D))
    y_ours, res = ours(x)
    probs = res.routing.probs_TE
    assert (probs.gather(1, idx_hf)[:, 1] == 0).all(), "the second choice underflowed"
    differ = idx_hf != res.routing.expert_TK
    assert differ.any(), "HF picks other zero-probability experts than minimoe here"
    assert (probs.gather(1, idx_hf)[differ] == 0).all(), "only zero-probability choices differ"
    assert_close(y_ours, hf(x.clone()), atol=2e-5, rtol=1e-4, name="same output")
