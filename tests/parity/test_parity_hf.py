"""Parity of minimoe's named conventions with HF transformers' own code (the installed 5.x).

Each test feeds the same inputs and weights to the HF module or function and to minimoe:

- Mixtral: `MixtralSparseMoeBlock` (every experts implementation HF exposes through
  `experts_implementation`) == `MoELayer(gating="mixtral", activation="swiglu")`: router logits,
  output, and gradients w.r.t. the input and every weight;
- Mixtral `load_balancing_loss_func` == `mixtral_load_balancing_loss` (one layer, two layers
  concatenated, padding masked);
- Switch Transformers: `router_z_loss_func` == `z_loss`; `load_balancing_loss_func` == the mean
  over sequences of `load_balancing_loss`; the Top1 router's per-sequence capacity == our
  `assign_slots(policy="position", group_size=S)`, and the whole `SwitchTransformersSparseMLP`
  == `MoELayer(gating="switch", capacity_formula="switch")`;
- DeepSeek-V3 `DeepseekV3TopkRouter` == `route(gating="deepseek_v3")` with bias and groups;
- Qwen2-MoE / Qwen3-MoE routers: norm_topk_prob=False == "switch", True == "mixtral".

Left out: attention, shared experts (DeepSeek-V3, Qwen2-MoE) and whole models; only the MoE
pieces are compared.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    DeepseekV3Config,
    MixtralConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
    SwitchTransformersConfig,
)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from transformers.models.mixtral import modeling_mixtral as hf_mixtral
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter
from transformers.models.switch_transformers import (
    modeling_switch_transformers as hf_switch,
)

from minimoe import (
    MoEConfig,
    MoELayer,
    assign_slots,
    load_balancing_loss,
    mixtral_load_balancing_loss,
    reference_moe,
    route,
    z_loss,
)
from minimoe.testing import assert_close

D, F, E, K = 32, 48, 8, 2
B, S = 2, 5
TOL = {torch.float64: dict(atol=1e-6, rtol=1e-5), torch.float32: dict(atol=2e-5, rtol=1e-4)}


# ----------------------------------------------------------------------------------------------
# Mixtral sparse MoE block
# ----------------------------------------------------------------------------------------------


def _mixtral_pair(impl: str, dtype: torch.dtype, seed: int = 0):
    """An HF MixtralSparseMoeBlock with seeded weights, and a MoELayer holding the same weights."""
    cfg = MixtralConfig(
        hidden_size=D,
        intermediate_size=F,
        num_local_experts=E,
        num_experts_per_tok=K,
        router_jitter_noise=0.0,
        experts_implementation=impl,
    )
    hf = hf_mixtral.MixtralSparseMoeBlock(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hf.gate.weight.copy_(torch.randn(E, D, generator=g))
        hf.experts.gate_up_proj.copy_(torch.randn(E, 2 * F, D, generator=g) / D**0.5)
        hf.experts.down_proj.copy_(torch.randn(E, D, F, generator=g) / F**0.5)
    hf = hf.to(dtype).eval()
    ours = MoELayer(MoEConfig(D, F, E, top_k=K, activation="swiglu", gating="mixtral")).to(dtype)
    with torch.no_grad():
        ours.router.w_ED.copy_(hf.gate.weight)
        # HF fuses [gate; up] along the output dim: gate = w1, up = w3 (linear(x, W) = x W^T)
        w1_EFD, w3_EFD = hf.experts.gate_up_proj.chunk(2, dim=1)
        ours.experts.w1_EFD.copy_(w1_EFD)
        ours.experts.w3_EFD.copy_(w3_EFD)
        ours.experts.w2_EDF.copy_(hf.experts.down_proj)
    return hf, ours.eval()


# grouped_mm has no float64 CPU kernel in torch (torch._grouped_mm takes fp32/bf16/fp16 only)
MIXTRAL_CASES = [
    ("eager", torch.float64),
    ("eager", torch.float32),
    ("batched_mm", torch.float64),
    ("batched_mm", torch.float32),
    ("grouped_mm", torch.float32),
]


@pytest.mark.parametrize("impl,dtype", MIXTRAL_CASES)
def test_mixtral_block_forward_and_grads(impl: str, dtype: torch.dtype) -> None:
    hf, ours = _mixtral_pair(impl, dtype)
    assert hf.experts.config._experts_implementation == impl
    x = torch.randn(B, S, D, generator=torch.Generator().manual_seed(1), dtype=dtype)
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()

    y_hf = hf(x_hf)
    y_ours, result = ours(x_ours)
    assert_close(y_ours, y_hf, **TOL[dtype], name=f"output ({impl})")

    logits_hf, _, idx_hf = hf.gate(x.view(-1, D))
    assert_close(result.routing.logits_TE, logits_hf, atol=1e-5, rtol=1e-5, name="router logits")
    assert torch.equal(result.routing.expert_TK, idx_hf), "chosen experts differ"

    r = torch.randn(B, S, D, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (y_hf * r).sum().backward()
    (y_ours * r).sum().backward()
    assert_close(x_ours.grad, x_hf.grad, **TOL[dtype], name="grad x")
    assert_close(ours.router.w_ED.grad, hf.gate.weight.grad, **TOL[dtype], name="grad router")
    g1_hf, g3_hf = hf.experts.gate_up_proj.grad.chunk(2, dim=1)
    assert_close(ours.experts.w1_EFD.grad, g1_hf, **TOL[dtype], name="grad w1 (gate)")
    assert_close(ours.experts.w3_EFD.grad, g3_hf, **TOL[dtype], name="grad w3 (up)")
    assert_close(ours.experts.w2_EDF.grad, hf.experts.down_proj.grad, **TOL[dtype], name="grad w2")


def test_mixtral_experts_step_matches_oracle_in_float64() -> None:
    """With HF's own routing fed to both, the experts step agrees to float64 rounding."""
    hf, ours = _mixtral_pair("eager", torch.float64)
    x_TD = torch.randn(B * S, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, w_TK, idx_TK = hf.gate(x_TD)
    y_hf = hf.experts(x_TD, idx_TK, w_TK)
    y_ref = reference_moe(x_TD, idx_TK, w_TK, ours.experts.params)
    assert_close(y_ref, y_hf, atol=1e-12, rtol=1e-12, name="experts step")


def test_mixtral_router_runs_in_float32_like_ours() -> None:
    """HF's Mixtral router takes softmax in float32 even for a float64 model; so does minimoe."""
    hf, ours = _mixtral_pair("eager", torch.float64)
    x_TD = torch.randn(B * S, D, dtype=torch.float64)
    _, w_TK, _ = hf.gate(x_TD)
    logits_TE, _ = ours.router(x_TD)
    assert w_TK.dtype == torch.float32
    assert route(logits_TE, K, "mixtral").gate_TK.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Mixtral / Qwen load-balancing loss (K at balance, layers concatenated)
# ----------------------------------------------------------------------------------------------


def _ours_mixtral_lb(logits_TE: torch.Tensor, mask_T: torch.Tensor | None = None) -> torch.Tensor:
    r = route(logits_TE, K, "mixtral")
    return mixtral_load_balancing_loss(r.probs_TE, r.expert_TK, mask_T=mask_T)


def test_mixtral_lb_loss_one_layer_and_grad() -> None:
    logits = torch.randn(B * S, E, generator=torch.Generator().manual_seed(4)) * 2
    l_hf, l_ours = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    hf_loss = hf_mixtral.load_balancing_loss_func((l_hf,), E, K)
    ours_loss = _ours_mixtral_lb(l_ours)
    assert_close(ours_loss, hf_loss, name="HF Mixtral aux loss")
    hf_loss.backward()
    ours_loss.backward()
    assert_close(l_ours.grad, l_hf.grad, name="grad of the aux loss w.r.t. logits")


def test_mixtral_lb_loss_is_k_at_balance() -> None:
    """Uniform probabilities: P_e = 1/E and the f_e sum to K, so the loss is exactly K."""
    logits = torch.zeros(12, E)
    assert float(hf_mixtral.load_balancing_loss_func((logits,), E, K)) == pytest.approx(K)
    assert float(_ours_mixtral_lb(logits)) == pytest.approx(K)


def test_mixtral_lb_loss_two_layers_is_ours_on_concatenated_logits() -> None:
    g = torch.Generator().manual_seed(5)
    layer0, layer1 = torch.randn(B * S, E, generator=g), torch.randn(B * S, E, generator=g) * 3
    hf_loss = hf_mixtral.load_balancing_loss_func((layer0, layer1), E, K)
    assert_close(_ours_mixtral_lb(torch.cat([layer0, layer1])), hf_loss, name="two layers")
    # ... which is not the mean of the per-layer losses (HF issues #28255, #31464)
    per_layer = (_ours_mixtral_lb(layer0) + _ours_mixtral_lb(layer1)) / 2
    assert abs(float(per_layer) - float(hf_loss)) > 1e-4


def test_mixtral_lb_loss_with_padding_mask() -> None:
    g = torch.Generator().manual_seed(6)
    layer0, layer1 = torch.randn(B * S, E, generator=g), torch.randn(B * S, E, generator=g)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left padding
    mask_T = attention_mask.reshape(-1).bool()
    hf_loss = hf_mixtral.load_balancing_loss_func((layer0,), E, K, attention_mask)
    assert_close(_ours_mixtral_lb(layer0, mask_T), hf_loss, name="one layer, masked")
    hf_loss2 = hf_mixtral.load_balancing_loss_func((layer0, layer1), E, K, attention_mask)
    ours2 = _ours_mixtral_lb(torch.cat([layer0, layer1]), torch.cat([mask_T, mask_T]))
    assert_close(ours2, hf_loss2, name="two layers, masked")
    # padding really is left out: the loss equals the loss of the real tokens alone
    assert_close(_ours_mixtral_lb(layer0[mask_T]), hf_loss, name="real tokens only")


# ----------------------------------------------------------------------------------------------
# Switch Transformers: z-loss, load-balancing loss, per-sequence capacity
# ----------------------------------------------------------------------------------------------


def test_switch_z_loss() -> None:
    logits_BSE = torch.randn(3, 7, E, generator=torch.Generator().manual_seed(7)) * 4
    hf = hf_switch.router_z_loss_func(logits_BSE)
    assert_close(z_loss(logits_BSE.reshape(-1, E)), hf, name="z-loss")
    # hand value: at l = 0, logsumexp = log E
    zeros = torch.zeros(2, 3, E)
    assert float(hf_switch.router_z_loss_func(zeros)) == pytest.approx(math.log(E) ** 2)
    assert float(z_loss(zeros.reshape(-1, E))) == pytest.approx(math.log(E) ** 2)


def _switch_hf_lb(logits_BSE: torch.Tensor) -> torch.Tensor:
    """HF Switch's loss as its model calls it: softmax probs and the argmax expert."""
    probs_BSE = torch.softmax(logits_BSE, dim=-1)
    return hf_switch.load_balancing_loss_func(probs_BSE, logits_BSE.argmax(-1))


def _ours_switch_lb(logits_TE: torch.Tensor) -> torch.Tensor:
    r = route(logits_TE, 1, "switch")
    return load_balancing_loss(r.probs_TE, r.expert_TK, first_choice_only=True)


def test_switch_lb_loss_one_group_is_ours() -> None:
    logits_1SE = torch.randn(1, 16, E, generator=torch.Generator().manual_seed(8)) * 2
    assert_close(_ours_switch_lb(logits_1SE[0]), _switch_hf_lb(logits_1SE), name="one group")


def test_switch_lb_loss_is_mean_over_sequences() -> None:
    """HF Switch computes E^2 * mean_{b,e}(f_be * P_be): the mean over sequences of our loss on
    each sequence, which differs from our loss on all tokens pooled."""
    g = torch.Generator().manual_seed(9)
    logits_BSE = torch.randn(3, 8, E, generator=g)
    logits_BSE[0, :, 0] += 4.0  # sequence 0 prefers expert 0, sequence 1 expert 1
    logits_BSE[1, :, 1] += 4.0
    hf = _switch_hf_lb(logits_BSE)
    per_seq = torch.stack([_ours_switch_lb(seq) for seq in logits_BSE]).mean()
    assert_close(per_seq, hf, name="mean of per-sequence losses")
    pooled = _ours_switch_lb(logits_BSE.reshape(-1, E))
    assert float(pooled) < float(hf) - 0.1, "pooling hides the per-sequence imbalance"


S_SWITCH = 8  # tokens per sequence: Switch routes each sequence on its own


def _switch_pair(
    capacity: int, dtype: torch.dtype, d_ff: int = 24, n_exp: int = 4, act: str = "gelu"
):
    """An HF SwitchTransformersSparseMLP (GELU experts, so minimoe has the activation) and the
    MoELayer with the same weights and the Switch conventions."""
    cfg = SwitchTransformersConfig(
        d_model=D,
        d_ff=d_ff,
        num_experts=n_exp,
        expert_capacity=capacity,
        router_jitter_noise=0.0,
        dense_act_fn=act,
    )
    hf = hf_switch.SwitchTransformersSparseMLP(cfg)
    g = torch.Generator().manual_seed(10)
    with torch.no_grad():
        hf.router.classifier.weight.copy_(torch.randn(n_exp, D, generator=g))
        for e in range(n_exp):
            hf.experts[f"expert_{e}"].wi.weight.copy_(torch.randn(d_ff, D, generator=g) / D**0.5)
            hf.experts[f"expert_{e}"].wo.weight.copy_(torch.randn(D, d_ff, generator=g) / d_ff**0.5)
    hf = hf.to(dtype).eval()
    moe_cfg = MoEConfig(
        D,
        d_ff,
        n_exp,
        top_k=1,
        activation=act,
        gating="switch",
        capacity_formula="switch",
        expert_capacity=capacity,
        group_size=S_SWITCH,
        drop_policy="position",
    )
    ours = MoELayer(moe_cfg).to(dtype)
    with torch.no_grad():
        ours.router.w_ED.copy_(hf.router.classifier.weight)
        for e in range(n_exp):
            ours.experts.w1_EFD[e].copy_(hf.experts[f"expert_{e}"].wi.weight)
            ours.experts.w2_EDF[e].copy_(hf.experts[f"expert_{e}"].wo.weight)
    return hf, ours.eval()


@pytest.mark.parametrize("capacity", [1, 2, 3, 8])
def test_switch_router_capacity_is_per_sequence_position(capacity: int) -> None:
    """HF 5.x's Top1 router still enforces the capacity (cumsum over the sequence, kept while
    the 1-indexed count <= C); it equals our position policy with one group per sequence."""
    hf, _ = _switch_pair(capacity, torch.float32)
    x = torch.randn(3, S_SWITCH, D, generator=torch.Generator().manual_seed(11))
    onehot_BSE, top_prob_BS1, logits_BSE = hf.router(x)
    logits_TE = logits_BSE.reshape(-1, 4)
    r = route(logits_TE, 1, "switch")
    keep_TK, pos_TK = assign_slots(
        r.expert_TK, r.gate_TK, 4, capacity, "position", group_size=S_SWITCH
    )
    hf_keep_T = onehot_BSE.reshape(-1, 4).sum(-1).bool()
    assert torch.equal(keep_TK[:, 0], hf_keep_T), "kept tokens differ"
    # the expert HF dispatches to is the argmax, and its weight the top-1 prob (no renormalise)
    assert torch.equal(onehot_BSE.reshape(-1, 4).argmax(-1)[hf_keep_T], r.expert_TK[hf_keep_T, 0])
    assert_close(r.gate_TK[:, 0], top_prob_BS1.reshape(-1), name="top-1 prob")
    # HF's slot in the buffer: the 1-indexed cumsum minus one, as our position_TK
    hf_pos_BSE = torch.cumsum(torch.nn.functional.one_hot(logits_BSE.argmax(-1), 4), dim=1) - 1
    hf_pos_T = hf_pos_BSE.reshape(-1, 4).gather(1, r.expert_TK)[:, 0]
    assert torch.equal(pos_TK[:, 0], torch.where(hf_keep_T, hf_pos_T, -1))
    if capacity == 1:
        assert (~hf_keep_T).any(), "this case is meant to overflow"
    if capacity == S_SWITCH:
        assert hf_keep_T.all(), "C = S can never drop"


def test_switch_router_on_flat_tokens_has_one_group() -> None:
    """Given (T, D) instead of (B, S, D), HF's router counts the capacity over all T tokens:
    our group_size=None."""
    hf, _ = _switch_pair(2, torch.float32)
    x_TD = torch.randn(3 * S_SWITCH, D, generator=torch.Generator().manual_seed(12))
    onehot_TE, _, logits_TE = hf.router(x_TD)
    r = route(logits_TE, 1, "switch")
    keep_TK, _ = assign_slots(r.expert_TK, r.gate_TK, 4, 2, "position", group_size=None)
    assert torch.equal(keep_TK[:, 0], onehot_TE.sum(-1).bool())
    assert int(onehot_TE.sum()) <= 4 * 2


@pytest.mark.parametrize(
    "capacity,dtype", [(2, torch.float64), (2, torch.float32), (8, torch.float64)]
)
def test_switch_sparse_mlp_is_our_layer(capacity: int, dtype: torch.dtype) -> None:
    """The whole HF sparse MLP: a dropped token's output is 0 in both (HF PR #37123)."""
    hf, ours = _switch_pair(capacity, dtype)
    x = torch.randn(3, S_SWITCH, D, generator=torch.Generator().manual_seed(13), dtype=dtype)
    y_hf = hf(x)
    y_ours, result = ours(x)
    assert_close(y_ours, y_hf, **TOL[dtype], name="Switch sparse MLP output")
    dropped_T = ~result.keep_TK[:, 0]
    if capacity == 2:
        assert dropped_T.any(), "this case is meant to overflow"
    assert torch.all(y_hf.reshape(-1, D)[dropped_T] == 0), "HF: a dropped token's output is 0"


@pytest.mark.parametrize("capacity", [3, 8])
def test_switch_sparse_mlp_relu_experts(capacity: int) -> None:
    """HF SwitchTransformers' default activation, `dense_act_fn="relu"`, == activation="relu",
    output and gradients, for every experts implementation of minimoe."""
    from minimoe import einsum_moe, grouped_mm_moe, loop_moe, padded_bmm_moe

    hf, ours = _switch_pair(capacity, torch.float64, act="relu")
    x = torch.randn(
        2, S_SWITCH, D, generator=torch.Generator().manual_seed(31), dtype=torch.float64
    )
    x_hf = x.clone().requires_grad_()
    y_hf = hf(x_hf)
    y_hf.sum().backward()
    for fn in (loop_moe, einsum_moe, padded_bmm_moe, grouped_mm_moe, reference_moe):
        ours.experts_fn = fn
        x_ours = x.clone().requires_grad_()
        y_ours, _ = ours(x_ours)
        assert_close(y_ours, y_hf, **TOL[torch.float64], name=f"{fn.__name__}: ReLU Switch MLP")
        y_ours.sum().backward()
        assert_close(x_ours.grad, x_hf.grad, **TOL[torch.float64], name=f"{fn.__name__}: dx")
    assert (y_hf != 0).any()


# ----------------------------------------------------------------------------------------------
# DeepSeek-V3: sigmoid, selection-only bias, group-limited top-k, scale
# ----------------------------------------------------------------------------------------------

DS_E, DS_K, DS_GROUPS, DS_TOPK_GROUPS, DS_SCALE = 16, 4, 4, 2, 2.5


def _deepseek_router(
    bias_E: torch.Tensor, seed: int = 14, norm_topk_prob: bool = True
) -> DeepseekV3TopkRouter:
    cfg = DeepseekV3Config(
        hidden_size=D,
        n_routed_experts=DS_E,
        num_experts_per_tok=DS_K,
        n_group=DS_GROUPS,
        topk_group=DS_TOPK_GROUPS,
        routed_scaling_factor=DS_SCALE,
        norm_topk_prob=norm_topk_prob,
    )
    hf = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(DS_E, D, generator=torch.Generator().manual_seed(seed)) / 3)
        hf.e_score_correction_bias.copy_(bias_E)
    return hf


def _by_expert_id(idx_TK: torch.Tensor, w_TK: torch.Tensor):
    """HF's top-k is unsorted; compare (ids, weights) sorted by expert id."""
    order = idx_TK.argsort(dim=-1)
    return idx_TK.gather(1, order), w_TK.gather(1, order)


def _deepseek_both(bias_E: torch.Tensor):
    hf = _deepseek_router(bias_E)
    x_TD = torch.randn(24, D, generator=torch.Generator().manual_seed(15))
    logits_TE, w_hf, idx_hf = hf(x_TD)
    r = route(
        logits_TE,
        DS_K,
        "deepseek_v3",
        bias_E=bias_E,
        n_groups=DS_GROUPS,
        topk_groups=DS_TOPK_GROUPS,
        routed_scaling_factor=DS_SCALE,
    )
    return logits_TE, (idx_hf, w_hf), (r.expert_TK, r.gate_TK)


@pytest.mark.parametrize(
    "bias_kind", ["zero", "positive", "mixed", "negative"], ids=lambda s: f"bias-{s}"
)
def test_deepseek_v3_router(bias_kind: str) -> None:
    g = torch.Generator().manual_seed(16)
    bias_E = {
        "zero": torch.zeros(DS_E),
        "positive": torch.rand(DS_E, generator=g) * 0.3,
        "mixed": (torch.rand(DS_E, generator=g) - 0.5) * 0.6,
        "negative": -0.5 - torch.rand(DS_E, generator=g),  # every s + b < 0
    }[bias_kind]
    logits_TE, (idx_hf, w_hf), (idx_ours, w_ours) = _deepseek_both(bias_E)
    idx_hf, w_hf = _by_expert_id(idx_hf, w_hf)
    idx_ours, w_ours = _by_expert_id(idx_ours, w_ours)
    assert torch.equal(idx_ours, idx_hf), "chosen experts differ"
    assert_close(w_ours, w_hf, name="DeepSeek-V3 weights")
    # the bias picks, never weighs: the weights are the unbiased sigmoids, renormalised, scaled
    s_TK = torch.sigmoid(logits_TE).gather(1, idx_hf)
    assert_close(w_hf, s_TK / s_TK.sum(-1, keepdim=True) * DS_SCALE, name="unbiased weights")
    # every token's picks come from at most topk_groups groups
    for row in idx_hf // (DS_E // DS_GROUPS):
        assert row.unique().numel() <= DS_TOPK_GROUPS


@pytest.mark.parametrize("bias_scale", [0.0, 0.3])
def test_deepseek_v3_norm_topk_prob_false(bias_scale: float) -> None:
    """HF `norm_topk_prob=False`: the selected sigmoid scores times the scale, no renormalising."""
    bias_E = (torch.rand(DS_E, generator=torch.Generator().manual_seed(32)) - 0.5) * bias_scale
    hf = _deepseek_router(bias_E, norm_topk_prob=False)
    x_TD = torch.randn(20, D, generator=torch.Generator().manual_seed(33))
    logits_TE, w_hf, idx_hf = hf(x_TD)
    kw = dict(bias_E=bias_E, n_groups=DS_GROUPS, topk_groups=DS_TOPK_GROUPS,
              routed_scaling_factor=DS_SCALE)  # fmt: skip
    r = route(logits_TE, DS_K, "deepseek_v3", norm_topk_prob=False, **kw)
    idx_hf, w_hf = _by_expert_id(idx_hf, w_hf)
    idx_ours, w_ours = _by_expert_id(r.expert_TK, r.gate_TK)
    assert torch.equal(idx_ours, idx_hf)
    assert_close(w_ours, w_hf, name="DeepSeek-V3 without renormalisation")
    assert_close(w_hf, torch.sigmoid(logits_TE).gather(1, idx_hf) * DS_SCALE, name="s * scale")
    normed = route(logits_TE, DS_K, "deepseek_v3", **kw)
    assert (normed.gate_TK.sum(-1) - DS_SCALE).abs().max() < 1e-5
    assert (r.gate_TK.sum(-1) - DS_SCALE).abs().max() > 1e-2, "the two conventions differ"
    layer = MoELayer(MoEConfig(D, 8, DS_E, top_k=DS_K, gating="deepseek_v3", n_groups=DS_GROUPS,
                               topk_groups=DS_TOPK_GROUPS, routed_scaling_factor=DS_SCALE,
                               norm_topk_prob=False))  # fmt: skip
    _, res = layer(x_TD)
    s_TK = torch.sigmoid(res.routing.logits_TE).gather(1, res.routing.expert_TK)
    assert_close(res.routing.gate_TK, s_TK * DS_SCALE, name="layer, norm_topk_prob=False")


def test_deepseek_v3_group_mask_is_minus_inf() -> None:
    """HF 5.x masks the dropped groups with -inf, as minimoe does. A mask of 0 (older HF code)
    would pick from a dropped group once every s + b of the kept groups is negative."""
    bias_E = torch.full((DS_E,), -2.0)  # s + b in (-2, -1) for every expert
    logits_TE, (idx_hf, w_hf), (idx_ours, _) = _deepseek_both(bias_E)
    assert torch.equal(idx_ours.sort(-1).values, idx_hf.sort(-1).values)
    # what a zero mask would do: the dropped groups' 0 beats every kept (negative) score
    select_TE = torch.sigmoid(logits_TE) + bias_E
    grouped = select_TE.view(-1, DS_GROUPS, DS_E // DS_GROUPS)
    keep_groups = grouped.topk(2, dim=-1).values.sum(-1).topk(DS_TOPK_GROUPS, dim=-1).indices
    group_mask_TG = torch.zeros(select_TE.shape[0], DS_GROUPS).scatter_(1, keep_groups, 1.0)
    keep_TE = group_mask_TG.repeat_interleave(DS_E // DS_GROUPS, dim=1).bool()
    zero_masked_idx = select_TE.masked_fill(~keep_TE, 0.0).topk(DS_K, dim=-1).indices
    assert not keep_TE.gather(1, zero_masked_idx).all(), "a zero mask picks dropped experts"
    assert keep_TE.gather(1, idx_hf).all(), "HF and minimoe pick only kept groups"


# ----------------------------------------------------------------------------------------------
# Qwen2-MoE / Qwen3-MoE: norm_topk_prob chooses between "switch" and "mixtral"
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe"])
@pytest.mark.parametrize("norm_topk_prob,gating", [(False, "switch"), (True, "mixtral")])
def test_qwen_moe_router(family: str, norm_topk_prob: bool, gating: str) -> None:
    config_cls, router_cls = {
        "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeTopKRouter),
        "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeTopKRouter),
    }[family]
    cfg = config_cls(
        hidden_size=D, num_experts=E, num_experts_per_tok=K, norm_topk_prob=norm_topk_prob
    )
    hf = router_cls(cfg)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(E, D, generator=torch.Generator().manual_seed(17)))
    x_TD = torch.randn(B * S, D, generator=torch.Generator().manual_seed(18))
    logits_TE, w_hf, idx_hf = hf(x_TD)
    r = route(logits_TE, K, gating)
    assert torch.equal(r.expert_TK, idx_hf)
    assert_close(r.gate_TK, w_hf, name=f"{family} norm_topk_prob={norm_topk_prob}")
    other = route(logits_TE, K, "mixtral" if gating == "switch" else "switch")
    assert (other.gate_TK - w_hf).abs().max() > 1e-3, "the two conventions differ for K > 1"
