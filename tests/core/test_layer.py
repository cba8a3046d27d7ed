import contextlib

import pytest
import torch

from minimoe import (
    MoEConfig,
    MoELayer,
    einsum_moe,
    ffn,
    grouped_mm_moe,
    loop_moe,
    reference_moe,
    renormalize_survivors,
    route,
)
from minimoe.testing import assert_close

CFG = MoEConfig(d_model=16, d_ff=24, n_experts=4, top_k=2)


def _layer(cfg=CFG, seed=0, **kw):
    torch.manual_seed(seed)
    return MoELayer(cfg, **kw).double()


def test_output_matches_oracle_on_the_returned_routing():
    layer = _layer(CFG.replace(capacity_formula="deepspeed", capacity_factor=0.75))
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    y, res = layer(x)
    assert y.shape == x.shape and res.capacity == 6
    r = res.routing
    y_ref = reference_moe(
        x.view(-1, 16), r.expert_TK, res.gate_TK, layer.experts.params, res.keep_TK
    )
    assert_close(y.view(-1, 16), y_ref, atol=1e-12)
    assert int(res.keep_TK.sum()) + round(res.stats.drop_rate * 28) == 28  # conservation


def test_fully_dropped_tokens_output_zero():
    cfg = CFG.replace(top_k=1, capacity_formula="switch", expert_capacity=1, group_size=5)
    layer = _layer(cfg)
    x = torch.randn(5, 16, dtype=torch.float64)
    y, res = layer(x)
    dropped = ~res.keep_TK[:, 0]
    assert dropped.any()
    assert torch.equal(y[dropped], torch.zeros_like(y[dropped]))
    assert res.stats.load_E.max() <= 1


def test_one_expert_layer_equals_dense_ffn():
    layer = _layer(
        MoEConfig(d_model=8, d_ff=12, n_experts=1, top_k=1, gating="switch", activation="gelu")
    )
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    p = layer.experts.params
    assert_close(y, ffn(x, p.w1_EFD[0], p.w2_EDF[0], None, "gelu"), atol=1e-12)


def test_noise_is_training_only():
    for noise in ("shazeer", "jitter", "gumbel"):
        layer = _layer(CFG.replace(noise=noise)).eval()
        x = torch.randn(32, 16, dtype=torch.float64)
        (y1, r1), (y2, r2) = layer(x), layer(x)
        assert torch.equal(y1, y2) and torch.equal(r1.routing.logits_TE, r2.routing.logits_TE)
        layer.train()
        _, r3 = layer(x)
        _, r4 = layer(x)
        assert not torch.equal(r3.routing.expert_TK, r4.routing.expert_TK) or not torch.equal(
            r3.routing.gate_TK, r4.routing.gate_TK
        ), f"{noise} noise did nothing in training mode"


def test_losses_are_returned_and_differentiable():
    layer = _layer(CFG.replace(aux_loss="mixtral"))
    x = torch.randn(64, 16, dtype=torch.float64)
    y, res = layer(x)
    (y.pow(2).mean() + 0.01 * res.aux_loss + 1e-3 * res.z_loss).backward()
    assert layer.router.w_ED.grad.abs().sum() > 0
    assert 1.5 < res.aux_loss.item() < 3.0  # K = 2 near balance for a random router
    assert _layer(CFG.replace(aux_loss="none"))(x)[1].aux_loss.item() == 0.0


def test_deepseek_v3_balance_loss_normalises_the_sigmoid_scores():
    # DeepSeek-V3 eq. 19: s' = s / sum_j s_j before averaging, so the loss is 1 at balance.
    layer = _layer(CFG.replace(gating="deepseek_v3"))
    with torch.no_grad():
        layer.router.w_ED.zero_()  # every score sigmoid(0) = 0.5: P_e = 1/E whatever is chosen
    _, res = layer(torch.randn(32, 16, dtype=torch.float64))
    assert_close(res.aux_loss, torch.tensor(1.0))
    _, res = _layer(CFG.replace(gating="deepseek_v3"))(torch.randn(32, 16, dtype=torch.float64))
    s_TE = res.routing.probs_TE / res.routing.probs_TE.sum(-1, keepdim=True)
    f_E = torch.bincount(res.routing.expert_TK.flatten(), minlength=4).to(s_TE.dtype) / 64
    assert_close(res.aux_loss, 4 * (f_E * s_TE.mean(0)).sum())


def test_selection_bias_moves_load_but_not_weights():
    cfg = CFG.replace(gating="deepseek_v3", top_k=1)
    layer = _layer(cfg)
    x = torch.randn(64, 16, dtype=torch.float64)
    _, before = layer(x)
    layer.router.bias_E[2] = 10.0
    _, after = layer(x)
    assert torch.all(after.routing.expert_TK == 2)
    assert_close(
        after.routing.gate_TK, torch.ones(64, 1, dtype=torch.float32)
    )  # renormalised top-1
    load = before.stats.routed_E
    bias0 = layer.router.bias_E.clone()
    layer.router.update_bias(load, rate=0.1)
    assert torch.equal(
        (layer.router.bias_E - bias0).sign(), (load.double().mean() - load).sign().float()
    )


def test_shapes_and_empty_input():
    layer = _layer()
    y, res = layer(torch.zeros(0, 16, dtype=torch.float64))
    assert y.shape == (0, 16) and res.aux_loss.item() == 0.0
    y, _ = layer(torch.randn(1, 16, dtype=torch.float64))
    assert y.shape == (1, 16)
    y, _ = layer(torch.randn(3, 1, 4, 16, dtype=torch.float64))
    assert y.shape == (3, 1, 4, 16)


def test_float32_and_bfloat16_layers_route_in_float32():
    torch.manual_seed(0)
    layer = MoELayer(CFG).to(torch.bfloat16)
    y, res = layer(torch.randn(8, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and res.routing.logits_TE.dtype == torch.float32


def test_bad_layer_inputs():
    layer = _layer()
    with pytest.raises(ValueError, match="must end in d_model=16"):
        layer(torch.randn(4, 15, dtype=torch.float64))
    with pytest.raises(TypeError, match="layer is torch.float64"):
        layer(torch.randn(4, 16))
    with pytest.raises(TypeError, match="MoEConfig"):
        MoELayer({"d_model": 16})


def test_experts_fn_is_an_explicit_argument():
    calls = []

    def spy(*args):
        calls.append(args[1].shape)
        return loop_moe(*args)

    layer = _layer(experts_fn=spy)
    layer(torch.randn(5, 16, dtype=torch.float64))
    assert calls == [(5, 2)]


def test_gumbel_noise_is_finite_and_standard():
    from minimoe import Router

    router = Router(4, 8, noise="gumbel").train()
    torch.manual_seed(0)
    _, noise = router(torch.randn(20000, 4))
    assert torch.isfinite(noise).all()
    assert abs(noise.mean().item() - 0.5772) < 0.02  # the Euler-Mascheroni constant


def test_check_finite_catches_nan_router_logits():
    layer = _layer(CFG.replace(check_finite=True))
    x = torch.randn(4, 16, dtype=torch.float64)
    x[2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="router logits contain NaN"):
        layer(x)
    layer(torch.randn(4, 16, dtype=torch.float64))  # finite input passes


@pytest.mark.parametrize("renormalize", [False, True])
def test_result_gates_are_after_drops_and_routing_keeps_the_routers_choice(renormalize):
    cfg = CFG.replace(
        capacity_formula="deepspeed", capacity_factor=0.5, renormalize_after_drop=renormalize
    )
    layer = _layer(cfg)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    y, res = layer(x)
    chosen = route(res.routing.logits_TE, cfg.top_k, cfg.gating)
    assert not res.keep_TK.all(), "the case needs drops"
    assert torch.equal(res.routing.gate_TK, chosen.gate_TK)  # untouched by the drops
    if renormalize:
        expected = renormalize_survivors(chosen.gate_TK, res.keep_TK)
    else:
        expected = chosen.gate_TK * res.keep_TK
    assert torch.equal(res.gate_TK, expected)
    assert torch.equal(res.gate_TK[~res.keep_TK], torch.zeros_like(res.gate_TK[~res.keep_TK]))
    r = res.routing
    y_ref = reference_moe(x.view(-1, 16), r.expert_TK, res.gate_TK, layer.experts.params)
    assert_close(y.view(-1, 16), y_ref, atol=1e-12)  # the result's gates alone give the output


_HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _count_host_reads():
    """Count the ways a tensor's value reaches Python (each is a host sync on an accelerator)."""
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return method(self, *args, **kwargs)

        return wrapper

    for name, method in saved.items():
        setattr(torch.Tensor, name, counting(name, method))
    try:
        yield calls
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


# the id-range check (one tolist) is the only one the layer itself makes; the rest belong to the
# implementation (einsum reads its capacity back to size its buffers, the sorted path asks whether
# any slot was dropped) or to the "deepspeed" capacity formula (a float32 CPU scalar, read twice)
@pytest.mark.parametrize(
    "fn, changes, expected",
    [
        (loop_moe, {}, 1),
        (einsum_moe, {}, 2),
        (grouped_mm_moe, {}, 2),
        (loop_moe, dict(aux_loss="mixtral"), 1),
        (loop_moe, dict(capacity_formula="deepspeed", capacity_factor=1.0), 3),
        (loop_moe, dict(capacity_formula="megatron", capacity_factor=1.0), 1),
    ],
)
def test_forward_reads_nothing_back_unless_statistics_are_asked_for(fn, changes, expected):
    layer = MoELayer(CFG.replace(**changes), experts_fn=fn)
    x = torch.randn(2, 5, 16)
    with _count_host_reads() as reads:
        _, res = layer(x)
    assert len(reads) == expected, f"host reads per forward pass: {reads}"
    with _count_host_reads() as reads:
        stats = res.stats
    assert len(reads) >= 5, "the statistics read their numbers back, on request"
    assert res.stats is stats  # computed once
    assert stats.load_E.sum() == int(res.keep_TK.sum())
