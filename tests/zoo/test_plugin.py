"""Every router plugs into the tiny LM and the collapse lab through the same interfaces."""

from __future__ import annotations

import pytest
import torch

from minimoe.collapse.lab import Setting, run_setting
from minimoe.lm.data import build_corpus
from minimoe.lm.model import LMConfig, TinyLM, count_params
from minimoe.lm.train import TrainConfig, lm_loss, router_losses, train
from minimoe.zoo import measure_causality
from minimoe.zoo.layers import ROUTERS

SMALL = dict(seq_len=16, d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=16)


def _cfg(router):
    extra = {"capacity_formula": "megatron", "capacity_factor": 1.0} if router == "reroute" else {}
    if router == "peer":  # h * K = 2 of 4 experts (its default h = F = 16 heads would reach all 4)
        extra = {"router_options": {"heads": 1}}
    return LMConfig(router=router, **SMALL, **extra)


@pytest.mark.parametrize("router", ROUTERS)
def test_tiny_lm_one_training_step(router):
    torch.manual_seed(0)
    model = TinyLM(_cfg(router))
    assert len(model.moe_layers) == 2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(0))
    logits, results = model(idx[:, :-1])
    lm = lm_loss(logits, idx[:, 1:])
    aux, z = router_losses(results, lm)
    before = [p.detach().clone() for p in model.parameters()]
    (lm + 0.01 * aux + 0.001 * z).backward()
    opt.step()
    assert torch.isfinite(lm) and logits.shape == (3, 16, 256)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for r in results:
        assert r.stats.routed_E.numel() in (4, 7)  # fine-grained routes over 7 experts
    total, active = count_params(model)
    assert 0 < active < total


def test_param_counts_match_where_they_should():
    def counts(router):
        torch.manual_seed(0)
        return count_params(TinyLM(_cfg(router)))

    tc_total, tc_active = counts("token_choice")
    fg_total, fg_active = counts("shared_fine_grained")
    # same experts' weights; the fine-grained router is wider (7 rows instead of 4)
    router_extra = 2 * (7 - 4) * 16
    assert (fg_total, fg_active) == (tc_total + router_extra, tc_active + router_extra)
    assert counts("expert_choice") == (tc_total, tc_active)
    assert counts("reroute") == (tc_total, tc_active)
    pr_total, pr_active = counts("pr_moe")
    # experts 2 + 4 plus one MLP per layer (8 expert-sized FFNs, as 4 + 4), routers 2 + 4 rows
    # instead of 4 + 4, and the Linear(D, 2) mixing coefficients of each layer
    router_saving, coefficients = 2 * 16, 2 * (2 * 16 + 2)
    assert pr_total == tc_total - router_saving + coefficients
    assert pr_active == tc_active - router_saving + coefficients


@pytest.mark.slow
def test_train_calls_the_warmup_hook(tmp_path):
    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    corpus = build_corpus(["a.txt"], root=tmp_path)
    torch.manual_seed(0)
    model = TinyLM(LMConfig(router="topk_warmup", **SMALL))
    seen = []
    tcfg = TrainConfig(steps=4, batch_size=2, eval_every=0, eval_batches=1, warmup=1)
    train(
        model,
        corpus,
        tcfg,
        progress=False,
        callback=lambda step, m, results, info: seen.append(results[0].routing.expert_TK.shape[1]),
    )
    assert seen[0] == 4 and seen[-1] == 2  # dense at step 0, the target K by the end


@pytest.mark.slow
@pytest.mark.parametrize(
    "router", [r for r in ROUTERS if r not in ("hash", "expert_choice_causal")]
)  # the collapse task has neither token ids (hash) nor sequences (per-position groups); PEER
# plugs in (this test) though the arena leaves it out of this task
def test_collapse_lab_runs_every_router(router):
    res = run_setting(Setting(router, router=router), steps=3, record=True)
    assert len(res.train_loss_H) == 3 and res.final["val_loss"] > 0
    assert len(res.final["routed_E"]) == (15 if router == "shared_fine_grained" else 8)


@pytest.mark.slow
def test_causality_in_the_tiny_lm():
    """Expert choice over the batch leaks the future into the LM's logits; per-position expert
    choice, Soft MoE aside, and token choice (dropless) do not."""
    idx = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    leaks = {}
    for router in ("token_choice", "expert_choice", "expert_choice_causal", "soft_moe"):
        torch.manual_seed(0)
        leaks[router] = measure_causality(TinyLM(_cfg(router)), idx, positions=[3, 8])
    assert leaks["token_choice"].causal
    assert leaks["expert_choice_causal"].causal
    assert not leaks["expert_choice"].causal
    assert not leaks["soft_moe"].causal
