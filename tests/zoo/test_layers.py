"""Each router's layer against its function and a float64 loop: outputs, gradients, statistics."""

from __future__ import annotations

import pytest
import torch

from minimoe import MoEConfig, ffn, reference_moe
from minimoe.capacity import assign_slots, expert_capacity
from minimoe.zoo import expert_choice, hash_route, recurrent_router_step, soft_moe
from minimoe.zoo.expert_choice import ExpertChoiceLayer
from minimoe.zoo.fine_grained import FineGrainedLayer
from minimoe.zoo.hash import HashLayer
from minimoe.zoo.layers import ROUTERS, inactive_params, make_moe_layer
from minimoe.zoo.recurrent import RecurrentRouterLayer
from minimoe.zoo.reference import (
    expert_choice_moe_loop,
    reroute_loop,
    shared_routed_loop,
    soft_moe_loop,
)
from minimoe.zoo.reroute import RerouteLayer, reroute_slots
from minimoe.zoo.residual import ResidualMoELayer, pyramid_experts
from minimoe.zoo.soft_moe import SoftMoELayer
from minimoe.zoo.warmup import TopKWarmupLayer, warmup_k

CFG = MoEConfig(d_model=8, d_ff=8, n_experts=4, top_k=2)


def _double(layer):
    torch.manual_seed(0)
    return layer.double()


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grads(y, inputs, seed=1):
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return torch.autograd.grad((y * R).sum(), inputs, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("group", ["batch", "position"])
def test_expert_choice_layer_matches_loop(group):
    torch.manual_seed(0)
    layer = ExpertChoiceLayer(CFG, group=group).double()
    x = _x(3, 5, 8).requires_grad_(True)
    y, r = layer(x)
    token, gate = r.extra["token_EC"], r.extra["gate_EC"].double()
    p = layer.experts.params
    y_ref = expert_choice_moe_loop(x.view(-1, 8), token, gate, p).view(3, 5, 8)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    g = _grads(y, [x, p.w1_EFD, p.w2_EDF, p.w3_EFD])
    g_ref = _grads(y_ref, [x, p.w1_EFD, p.w2_EDF, p.w3_EFD])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert layer.router.w_ED.grad is None
    y.sum().backward()
    assert layer.router.w_ED.grad.abs().sum() > 0  # the gates carry the router's gradient
    # capacity: cf = K = 2 tokens per token on average: T*2/E per group
    probs = r.extra["probs_TE"]
    if group == "batch":
        assert token.shape == (4, 8)  # ceil(15 * 2 / 4)
        assert torch.equal(token, expert_choice(probs, 8)[0])
    else:
        assert token.shape == (4, 5 * 2)  # per position: ceil(3 * 2 / 4) = 2, 5 positions
        for s in range(5):
            local, _ = expert_choice(probs.view(3, 5, 4)[:, s], 2)
            assert torch.equal(token[:, 2 * s : 2 * s + 2], local * 5 + s)
    st = r.stats
    assert st.max_over_mean == 1.0 and st.routed_E.tolist() == [token.shape[1]] * 4
    chosen = torch.bincount(token.reshape(-1), minlength=15)
    assert st.drop_rate == pytest.approx(float((chosen == 0).double().mean()))
    assert float(r.aux_loss) == 0.0 and r.z_loss > 0


@pytest.mark.parametrize("shape", [(3, 6, 8), (12, 8)])
def test_soft_moe_layer_matches_the_function_per_group(shape):
    torch.manual_seed(0)
    layer = SoftMoELayer(CFG, group_size=6).double()
    assert layer.slots_per_expert == 3  # ceil(K * 6 / E)
    x = _x(*shape).requires_grad_(True)
    y, r = layer(x)
    groups = x.reshape(-1, 6, 8)
    p = layer.experts.params
    y_fn = torch.cat([soft_moe(g, layer.phi_DEC, p) for g in groups]).view(shape)
    y_loop = torch.cat([soft_moe_loop(g, layer.phi_DEC, p) for g in groups]).view(shape)
    torch.testing.assert_close(y, y_loop, atol=1e-10, rtol=0)
    ins = [x, layer.phi_DEC, p.w1_EFD]
    for a, b in zip(_grads(y, ins), _grads(y_fn, ins)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert r.stats.drop_rate == 0.0 and r.stats.load_E.tolist() == [len(groups) * 3] * 4
    assert int(r.stats.routed_E.sum()) == x.numel() // 8  # one per token


def test_soft_moe_layer_bad_group():
    layer = SoftMoELayer(CFG, group_size=5)
    with pytest.raises(ValueError, match="groups"):
        layer(torch.randn(12, 8))
    with pytest.raises(ValueError, match="slots_per_expert"):
        SoftMoELayer(CFG)


def test_hash_layer_matches_loop_and_needs_ids():
    torch.manual_seed(0)
    layer = HashLayer(CFG, vocab_size=11).double()
    assert layer.experts.w1_EFD.shape == (4, 16, 8)  # K * F: the active size of top-2 of F
    x = _x(2, 5, 8)
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    y, r = layer(x, context={"token_ids": ids})
    e = hash_route(ids.reshape(-1), layer.expert_V)[:, None]
    y_ref = reference_moe(
        x.view(-1, 8), e, torch.ones(10, 1, dtype=torch.float64), layer.experts.params
    )
    torch.testing.assert_close(y.view(-1, 8), y_ref, atol=1e-12, rtol=0)
    assert torch.equal(r.stats.routed_E, torch.bincount(e[:, 0], minlength=4))
    with pytest.raises(ValueError, match="token ids"):
        layer(x)
    with pytest.raises(ValueError, match="token_ids"):
        layer(x, context={"token_ids": ids[:, :3]})


def test_fine_grained_layer_is_matched_and_matches_loop():
    torch.manual_seed(0)
    layer = FineGrainedLayer(CFG, granularity=2, n_shared=1).double()
    assert (layer.n_routed, layer.top_k, layer.d_ff) == (7, 3, 4)
    c = layer.param_counts()
    assert c["total"] == c["plain_total"] and c["active"] == c["plain_active"]
    x = _x(10, 8)
    y, r = layer(x)
    y_ref = shared_routed_loop(
        x, layer.shared.params, r.routing.expert_TK, r.routing.gate_TK, layer.experts.params
    )
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)  # float32 gates
    assert r.routing.expert_TK.shape == (10, 3)
    with pytest.raises(ValueError, match="granularity"):
        FineGrainedLayer(CFG, granularity=3)


def test_residual_layer_and_pyramid():
    assert pyramid_experts(8, 2) == [4, 8] and pyramid_experts(8, 1) == [8]
    assert pyramid_experts(8, 4) == [4, 4, 8, 8] and pyramid_experts(1, 2) == [1, 1]
    torch.manual_seed(0)
    layer = ResidualMoELayer(CFG, n_experts=2, stats_width=4).double()
    x = _x(9, 8)
    y, r = layer(x)
    moe = reference_moe(x, r.routing.expert_TK, r.routing.gate_TK.double(), layer.experts.params)
    mlp = ffn(x, layer.mlp.w1_EFD[0], layer.mlp.w2_EDF[0], layer.mlp.w3_EFD[0], "swiglu")
    c = torch.softmax(layer.coefficient(x), -1)
    torch.testing.assert_close(y, c[:, :1] * moe + c[:, 1:] * mlp, atol=1e-12, rtol=0)
    assert r.routing.expert_TK.shape == (9, 1)
    assert r.stats.routed_E.shape == (4,) and r.stats.routed_E[2:].sum() == 0
    assert inactive_params(layer) == 1 * 3 * 8 * 8


def test_recurrent_layers_share_the_cell_and_carry_the_state():
    shared: dict = {}
    torch.manual_seed(0)
    l1 = make_moe_layer("recurrent", CFG, shared=shared, n_moe_layers=2).double()
    l2 = make_moe_layer("recurrent", CFG, shared=shared, layer_index=1, n_moe_layers=2).double()
    assert l1.cell is l2.cell and isinstance(l1, RecurrentRouterLayer)
    x = _x(6, 8)
    ctx: dict = {}
    _, r1 = l1(x, context=ctx)
    h1 = ctx["recurrent_router_h"]
    _, r2 = l2(x, context=ctx)
    logits2, _ = recurrent_router_step(x, h1, l2.w_proj_ZD, l2.cell, l2.w_out_EZ)
    torch.testing.assert_close(r2.routing.logits_TE, logits2.float())
    _, r2_alone = l2(x)  # without the first layer's state
    assert not torch.allclose(r2_alone.routing.logits_TE, r2.routing.logits_TE)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("T, E, K, C", [(12, 4, 2, 4), (20, 5, 1, 3), (9, 3, 3, 8), (7, 4, 2, 1)])
def test_reroute_slots_matches_loop_and_never_drops_more(seed, T, E, K, C):
    gen = torch.Generator().manual_seed(seed)
    # a skewed router, so experts overflow
    probs = torch.softmax(
        torch.randn(T, E, generator=gen, dtype=torch.float64) * 2 + torch.arange(E) * 0.5, -1
    )
    expert = probs.topk(K, dim=1).indices
    final, keep = reroute_slots(probs, expert, C)
    final_ref, keep_ref = reroute_loop(probs, expert, C)
    assert torch.equal(keep, keep_ref) and torch.equal(final[keep], final_ref[keep_ref])
    assert torch.bincount(final[keep], minlength=E).max() <= C
    for t in range(T):  # distinct experts per token
        assert len(set(final[t][keep[t]].tolist())) == int(keep[t].sum())
    keep_pos, _ = assign_slots(expert, probs.gather(1, expert), E, C, "position")
    assert bool((keep | ~keep_pos).all())  # every slot the position policy keeps is kept
    assert int(keep.sum()) >= max(
        int(assign_slots(expert, probs.gather(1, expert), E, C, p)[0].sum())
        for p in ("position", "k_major", "probs")
    )
    # it drops only when the experts it could still take are full
    assert int(keep.sum()) == T * K or int(keep.sum()) >= min(T * K, E * C) - E * K


def test_reroute_drops_only_what_capacity_forces():
    probs = torch.tensor([[0.7, 0.2, 0.1]] * 6, dtype=torch.float64)  # every token wants expert 0
    final, keep = reroute_slots(probs, torch.zeros(6, 1, dtype=torch.int64), 2)
    assert final[:, 0].tolist() == [0, 0, 1, 1, 2, 2] and bool(keep.all())
    _, keep = reroute_slots(probs, torch.zeros(6, 1, dtype=torch.int64), 1)
    assert int(keep.sum()) == 3


def test_reroute_layer_matches_reference():
    cfg = CFG.replace(capacity_formula="megatron", capacity_factor=0.75)
    torch.manual_seed(0)
    layer = RerouteLayer(cfg).double()
    x = _x(16, 8)
    y, r = layer(x)
    keep = r.extra["keep_TK"]
    y_ref = reference_moe(
        x, r.routing.expert_TK, r.routing.gate_TK.double(), layer.experts.params, keep
    )
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    assert r.extra["capacity"] == expert_capacity(16, 4, 2, "megatron", 0.75)
    assert r.stats.drop_rate == pytest.approx(1 - int(keep.sum()) / 32)
    with pytest.raises(ValueError, match="capacity"):
        RerouteLayer(CFG)


def test_warmup_schedule_and_layer():
    assert [warmup_k(s, 100, 8, 2, 0.25) for s in (0, 5, 13, 24, 25, 99)] == [8, 7, 5, 2, 2, 2]
    assert warmup_k(0, 10, 8, 2, 0.0) == 2
    layer = TopKWarmupLayer(CFG)
    assert layer.start_k == 4 and layer.current_k == 2
    layer.set_step(0, 40)
    _, r = layer(torch.randn(5, 8))
    assert r.routing.expert_TK.shape == (5, 4)  # dense at the start
    layer.set_step(39, 40)
    _, r = layer(torch.randn(5, 8))
    assert r.routing.expert_TK.shape == (5, 2)
    with pytest.raises(ValueError, match="start_k"):
        TopKWarmupLayer(CFG, start_k=1)


def test_make_moe_layer_every_router_forward_backward():
    ids = torch.randint(0, 16, (2, 6))
    for name in ROUTERS:
        cfg = CFG.replace(capacity_formula="megatron") if name == "reroute" else CFG
        layer = make_moe_layer(name, cfg, group_size=6, vocab_size=16)
        x = torch.randn(2, 6, 8, requires_grad=True)
        ctx = {"token_ids": ids}
        y, r = layer(x, context=ctx) if getattr(layer, "uses_context", False) else layer(x)
        (y.sum() + r.aux_loss + r.z_loss).backward()
        assert y.shape == x.shape and torch.isfinite(x.grad).all(), name
        assert r.stats.routed_E.numel() == 4 or name == "shared_fine_grained", name
        assert 0 <= inactive_params(layer) < sum(p.numel() for p in layer.parameters()), name
    with pytest.raises(ValueError, match="router"):
        make_moe_layer("nope", CFG)
    with pytest.raises(ValueError, match="vocab_size"):
        make_moe_layer("hash", CFG)
