"""Training: the loss falls, aux stays out of the reported loss, evaluation is clean, records,
checkpoints and the `minimoe train` command."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from minimoe.__main__ import main
from minimoe.lm.checkpoint import load_checkpoint, save_checkpoint
from minimoe.lm.data import build_corpus, get_batch
from minimoe.lm.model import LMConfig, TinyLM, dense_twin
from minimoe.lm.train import TrainConfig, evaluate, make_optimizer, train
from minimoe.testing import assert_close

CFG = LMConfig(seq_len=16, d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=8)
FAST = dict(batch_size=8, warmup=2, eval_every=0, eval_batches=2)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(max_bytes=30_000)


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return TinyLM(cfg)


def test_a_few_steps_reduce_the_validation_loss(corpus):
    model = _model()
    before = evaluate(model, corpus.val_U8, batch_size=8, n_batches=2)
    result = train(model, corpus, TrainConfig(steps=40, lr=1e-2, **FAST), progress=False)
    assert result.val_loss < before - 0.5, (before, result.val_loss)
    assert result.val_loss == result.history.val_loss[-1]
    assert result.steps == 40 and result.stopped_by == "steps"
    assert result.tokens_seen == 40 * 8 * 16 == result.history.tokens_seen[-1]


def test_aux_loss_is_not_in_the_reported_loss(corpus):
    """A huge aux_coef changes the update, never the reported lm loss of a step."""
    model = _model()
    start = copy.deepcopy(model)
    tcfg = TrainConfig(steps=2, aux_coef=1e3, z_coef=1e2, seed=3, **FAST)
    result = train(model, corpus, tcfg, progress=False)
    x, y = get_batch(corpus.train_U8, 8, 16, torch.Generator().manual_seed(3))
    logits, results = start(x)
    expected = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
    assert result.history.lm_loss[0] == pytest.approx(expected.item(), rel=1e-6)
    assert result.history.aux_loss[0] == pytest.approx(
        torch.stack([r.aux_loss for r in results]).mean().item(), rel=1e-6
    )
    # the same step with no aux loss reports the same lm loss but lands on other weights
    other = copy.deepcopy(start)
    small = train(
        other, corpus, TrainConfig(steps=2, aux_coef=0, z_coef=0, seed=3, **FAST), progress=False
    )
    assert small.history.lm_loss[0] == pytest.approx(result.history.lm_loss[0], rel=1e-6)
    router_a = model.moe_layers[0].router.w_ED
    router_b = other.moe_layers[0].router.w_ED
    assert not torch.allclose(router_a, router_b)
    assert result.val_loss == pytest.approx(
        evaluate(model, corpus.val_U8, batch_size=8, n_batches=2)
    )


@pytest.mark.parametrize("noise", ["shazeer", "jitter", "gumbel"])
def test_evaluate_runs_in_eval_mode_with_noise_off_and_restores_the_mode(corpus, noise):
    model = _model(LMConfig(**{**CFG.to_dict(), "noise": noise, "dropout": 0.3}))
    model.train()
    if noise == "shazeer":  # non-zero noise weights, so noise would show if it were on
        for layer in model.moe_layers:
            torch.nn.init.normal_(layer.router.w_noise_ED, std=1.0)
    a = evaluate(model, corpus.val_U8, batch_size=4, n_batches=2)
    b = evaluate(model, corpus.val_U8, batch_size=4, n_batches=2)
    assert model.training and a == b
    model.eval()
    x = torch.stack(
        [corpus.val_U8[i : i + 17] for i in torch.linspace(0, corpus.val_U8.numel() - 17, 8).long()]
    ).long()
    with torch.no_grad():
        logits, _ = model(x[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
    assert evaluate(model, corpus.val_U8, batch_size=4, n_batches=2) == pytest.approx(
        float(expected), rel=1e-6
    )
    assert not model.training


def test_recorder_shapes_and_conservation(corpus):
    cfg = LMConfig(
        **{
            **CFG.to_dict(),
            "n_layers": 3,
            "moe_every": 2,
            "capacity_formula": "megatron",
            "capacity_factor": 1.0,
        }
    )
    result = train(_model(cfg), corpus, TrainConfig(steps=3, **FAST), progress=False)
    rec = result.records
    assert rec.layer_ids == [1] and rec.steps == [1, 2, 3] and len(rec) == 3
    routed, load = rec.routed_HLE(), rec.load_HLE()
    assert routed.shape == load.shape == (3, 1, 4)
    assert (routed.sum(-1) == 8 * 16 * 2).all()  # every token's K slots were routed
    drop_SL = rec.metric_SL("drop_rate")
    assert drop_SL.shape == (3, 1)
    assert_close(1 - load.sum(-1) / routed.sum(-1).double(), drop_SL, atol=1e-12, name="drop rate")
    assert rec.metric_SL("aux").flatten().tolist() == pytest.approx(result.history.aux_loss)
    (row,) = rec.summary()
    assert row["layer"] == 1 and sum(row["load_fraction_E"]) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="unknown statistic"):
        rec.metric_SL("loss")
    dense = train(_model(dense_twin(CFG)), corpus, TrainConfig(steps=2, **FAST), progress=False)
    assert dense.records.load_HLE().shape == (0, 0, 1) and dense.records.summary() == []
    assert dense.history.aux_loss == [0.0, 0.0]


def test_time_limit_and_callback_stop_training(corpus):
    timed = train(
        _model(), corpus, TrainConfig(steps=50, time_limit_s=1e-6, **FAST), progress=False
    )
    assert timed.steps == 1 and timed.stopped_by == "time" and len(timed.history.val_loss) == 1
    seen = []

    def stop_at_two(step, model, results, info):
        seen.append((step, len(results), sorted(info)))
        return step == 2

    result = train(
        _model(), corpus, TrainConfig(steps=50, **FAST), progress=False, callback=stop_at_two
    )
    assert result.stopped_by == "callback" and result.steps == 2
    assert seen[0] == (1, 2, ["aux_loss", "lm_loss", "tokens_seen", "wall_s", "z_loss"])


def test_progress_bar_counts_the_budget_and_ends_complete(corpus, capsys):
    """A run stopped by its time budget or its callback ends with a full bar, not a short one."""
    timed = train(_model(), corpus, TrainConfig(steps=10_000, time_limit_s=0.3, **FAST))
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert timed.stopped_by == "time" and "0.3 s budget" in last
    assert "100%" in last and f"step {timed.steps}," in last and "val " in last
    stopped = train(_model(), corpus, TrainConfig(steps=50, **FAST), callback=lambda s, *a: s == 3)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert stopped.steps == 3 and "100%" in last and "3/3" in last


def test_jupyter_progress_bar_ends_full_and_green(corpus, monkeypatch):
    """In Jupyter, tqdm draws a bar closed short of its total red: a time-limited run must not."""
    import sys

    from tqdm.notebook import tqdm as notebook_tqdm

    bars = []

    class Recorded(notebook_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(sys.modules["minimoe.lm.train"], "tqdm", Recorded)
    train(_model(), corpus, TrainConfig(steps=10_000, time_limit_s=0.3, **FAST))
    train(_model(), corpus, TrainConfig(steps=50, **FAST), callback=lambda s, *a: s == 3)
    for bar in bars:
        _, widget, _ = bar.container.children
        assert widget.bar_style == "success" and widget.value == widget.max > 0


def test_bias_balancing_moves_the_selection_bias_only_when_asked(corpus):
    cfg = LMConfig(**{**CFG.to_dict(), "gating": "deepseek_v3"})
    moved = _model(cfg)
    train(moved, corpus, TrainConfig(steps=3, bias_rate=1e-2, **FAST), progress=False)
    still = _model(cfg)
    train(still, corpus, TrainConfig(steps=3, bias_rate=0.0, **FAST), progress=False)
    assert moved.moe_layers[0].router.bias_E.abs().sum() > 0
    assert still.moe_layers[0].router.bias_E.abs().sum() == 0


def test_bias_balancing_counts_routed_slots_not_the_survivors_of_a_capacity(corpus):
    # cf 0.5 drops half the slots: the busy experts' kept loads are all capped at C, so a rule
    # that counted survivors would see them as balanced and leave their biases alone
    changes = {"gating": "deepseek_v3", "capacity_formula": "megatron", "capacity_factor": 0.5}
    cfg = LMConfig(**{**CFG.to_dict(), **changes})
    model, seen = _model(cfg), []
    train(
        model,
        corpus,
        TrainConfig(steps=1, bias_rate=1e-2, **FAST),
        progress=False,
        callback=lambda step, m, results, info: seen.extend(results),
    )
    for layer, r in zip(model.moe_layers, seen):
        routed_E = r.stats.routed_E.double()
        assert r.stats.drop_rate > 0
        assert_close(layer.router.bias_E, 1e-2 * torch.sign(routed_E.mean() - routed_E))


def test_checkpoint_round_trip(corpus, tmp_path):
    cfg = LMConfig(**{**CFG.to_dict(), "gating": "deepseek_v3", "tie_embeddings": False})
    model = _model(cfg)
    tcfg = TrainConfig(steps=2, **FAST)
    train(model, corpus, tcfg, progress=False)
    optimizer = make_optimizer(model, tcfg)
    path = save_checkpoint(tmp_path / "ck" / "m.pt", model, cfg, optimizer, step=2, note="hi")
    loaded, loaded_cfg, extra = load_checkpoint(path)
    assert loaded_cfg == cfg and extra["step"] == 2 and extra["note"] == "hi"
    assert extra["optimizer"]["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]
    assert torch.equal(loaded.moe_layers[0].router.bias_E, model.moe_layers[0].router.bias_E)
    x = torch.randint(0, 256, (2, 16))
    model.eval(), loaded.eval()
    assert torch.equal(loaded(x)[0], model(x)[0])
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minimoe.lm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not the model's config"):
        save_checkpoint(tmp_path / "x.pt", model, CFG)


def test_train_config_refuses_bad_values():
    for change, match in [
        ({"steps": 0}, "steps"),
        ({"lr": 0}, "lr"),
        ({"aux_coef": -1}, "aux_coef"),
        ({"time_limit_s": 0}, "time_limit_s"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**change)


TINY_CLI = [
    "--steps",
    "3",
    "--max-bytes",
    "20000",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--d-model",
    "16",
    "--heads",
    "2",
    "--d-ff",
    "8",
    "--experts",
    "4",
    "--no-progress",
    "--eval-every",
    "2",
]


def test_cli_prints_the_expected_lines(capsys, tmp_path):
    assert main(["train", *TINY_CLI, "--save", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    for expected in [
        "corpus: 2 files from the Python stdlib",
        "MoE in every block: 4 experts, top-2, d_ff 8",
        "parameters: ",
        "unigram baseline: ",
        "done: 3 steps (stopped by steps)",
        "val loss by step: 2: ",
        "final val loss ",
        "load max/mean",
        "load share per expert: ",
        "saved checkpoint to ",
    ]:
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert (tmp_path / "m.pt").exists()
    assert main(["train", *TINY_CLI, "--dense", "--experts-impl", "grouped_mm"]) == 0
    out = capsys.readouterr().out
    assert "dense FFN (d_ff 16, swiglu)" in out and "routing: none (dense model)" in out


def test_cli_help_runs():
    done = subprocess.run(
        [sys.executable, "-m", "minimoe", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "--dense" in done.stdout
        and "--time-limit" in done.stdout
        and "--experts-impl" in done.stdout
    )


def test_cli_refuses_bad_settings(capsys):
    with pytest.raises(SystemExit):
        main(["train", *TINY_CLI, "--heads", "3"])
    assert "multiple of n_heads" in capsys.readouterr().err
