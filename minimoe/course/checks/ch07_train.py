"""Check for exercise 07.1: a training step that keeps the router losses out of the reported loss,
and an evaluation in eval mode.

The learner writes

    train_step(model, optimizer, x_BS, y_BS, aux_coef, z_coef) -> (lm, aux, z)
    evaluate_loss(model, x_BS, y_BS) -> float

for a `minimoe.lm.model.TinyLM`. The step optimises lm + aux_coef * aux + z_coef * z, where aux
and z are averaged over the MoE layers (as `minimoe.lm.train` does), and reports the three terms
apart: lm is the cross-entropy alone. The evaluation is the cross-entropy alone, in eval mode
(router noise and dropout off), and leaves the model in the mode it found.

The check runs the step with plain SGD (so the update is -lr times the gradient, exactly) on a
model whose parameters hold stale gradients, and compares the update and the reported numbers
with the ones of every known mistake: the aux loss folded into the reported loss, the z-loss
(or the aux loss, or both coefficients) forgotten in the optimised loss, a sum over layers
instead of the mean, a forgotten `optimizer.zero_grad()`, no step at all. The evaluation runs on
a model with Gumbel routing noise and dropout, so evaluating in train mode shows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise, make_generator
from minimoe.lm.model import LMConfig, TinyLM
from minimoe.lm.train import evaluate, lm_loss, router_losses, train
from minimoe.testing import is_close, max_diff

STEP = Exercise("07.1", "training step and evaluation", library=(evaluate, train))

LR, AUX_COEF, Z_COEF = 0.5, 0.5, 0.2  # large, so every term visibly moves the parameters
ATOL, RTOL = 1e-5, 1e-3
EVAL_RTOL = 1e-5  # the evaluation runs the same float32 ops as the reference
CFG = dict(seq_len=8, d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=16)


def _model(seed: int, weight_std: float | None = None, **changes: Any) -> TinyLM:
    """A tiny TinyLM in train mode; weight_std redraws its matrices (a confident, peaked model,
    whose loss moves visibly when noise or dropout is on)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyLM(LMConfig(**{**CFG, **changes}))
        if weight_std is not None:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() >= 2:
                        p.normal_(0.0, weight_std)
    return model.train()


def _batch(seed: int, B: int = 3, S: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.randint(0, 256, (B, S + 1), generator=make_generator(seed))
    return window[:, :-1], window[:, 1:]


def _number(ex: Exercise, value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ex.fail(f"{what} must be one number, got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad:
            raise ex.fail(
                f"{what} is a tensor that requires grad: report plain numbers with .item(); a "
                "tensor keeps the whole graph of the step alive (and its memory)"
            )
        value = value.item()
    if not isinstance(value, (int, float)):
        raise ex.fail(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def _flat(model: TinyLM) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def _reference_step(model: TinyLM, x_BS: torch.Tensor, y_BS: torch.Tensor):
    """The three losses of one forward, and the gradient of each (flattened, float64)."""
    params = list(model.parameters())
    logits_BSV, results = model(x_BS)
    lm = lm_loss(logits_BSV, y_BS)
    aux, z = router_losses(results, lm)
    grads = []
    for loss in (lm, aux, z):
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if gi is None else gi).reshape(-1).double()
                    for p, gi in zip(params, g)
                ]
            )
        )
    return (lm.item(), aux.item(), z.item()), grads


def check_train_step(train_step_fn: Callable, evaluate_fn: Callable) -> None:
    """Check `train_step(model, optimizer, x_BS, y_BS, aux_coef, z_coef) -> (lm, aux, z)` and
    `evaluate_loss(model, x_BS, y_BS) -> float` against `minimoe.lm.train`."""
    _check_step(train_step_fn)
    _check_evaluate(evaluate_fn)
    STEP.passed("the update, the reported losses, eval mode and the mode restored")


def _check_step(train_step_fn: Callable) -> None:
    model = _model(seed=1)
    x_BS, y_BS = _batch(seed=2)
    (lm, aux, z), (g_lm, g_aux, g_z) = _reference_step(copy.deepcopy(model), x_BS, y_BS)
    before = _flat(model)
    stale_gen = make_generator(3)
    for p in model.parameters():  # left over from an earlier backward
        p.grad = 0.5 * torch.randn(p.shape, generator=stale_gen, dtype=p.dtype)
    stale = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    case = f"a 2-layer TinyLM, SGD(lr={LR}), aux_coef={AUX_COEF}, z_coef={Z_COEF}"
    out = STEP.call(
        train_step_fn, model, optimizer, x_BS.clone(), y_BS.clone(), AUX_COEF, Z_COEF, case=case
    )
    if out is None:
        raise STEP.fail("train_step returned None: return the three numbers (lm, aux, z)")
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise STEP.fail(f"train_step must return three numbers (lm, aux, z), got {out!r}")
    got = [_number(STEP, v, name) for v, name in zip(out, ("lm", "aux", "z"))]
    _diagnose_reported(got, lm, aux, z)

    delta = _flat(model) - before
    expected = -LR * (g_lm + AUX_COEF * g_aux + Z_COEF * g_z)
    if _same(delta, expected):
        return
    if float(delta.abs().max()) == 0.0:
        raise STEP.fail(
            "the parameters did not change: call loss.backward() and then optimizer.step() "
            "(with optimizer.zero_grad() before the backward, not between it and the step)"
        )
    variants = [
        (
            "forgot optimizer.zero_grad(): the gradients of the previous step were added to "
            "this one's. Zero them before the backward",
            expected - LR * stale,
        ),
        (
            "the z-loss is missing from the optimised loss: minimise "
            "lm + aux_coef * aux + z_coef * z",
            -LR * (g_lm + AUX_COEF * g_aux),
        ),
        (
            "the aux loss is missing from the optimised loss: it must be reported apart, "
            "but still minimised (lm + aux_coef * aux + z_coef * z)",
            -LR * (g_lm + Z_COEF * g_z),
        ),
        (
            "only the lm loss was minimised: the router losses are reported apart, but the "
            "optimised loss is lm + aux_coef * aux + z_coef * z",
            -LR * g_lm,
        ),
        (
            "the coefficients are missing: minimise lm + aux_coef * aux + z_coef * z",
            -LR * (g_lm + g_aux + g_z),
        ),
        (
            "aux and z were summed over the MoE layers; take their mean over the layers",
            -LR * (g_lm + 2 * AUX_COEF * g_aux + 2 * Z_COEF * g_z),
        ),
        (
            "the gradient was applied twice (two optimizer.step() calls, or two backward passes)",
            2 * expected,
        ),
    ]
    for hint, candidate in variants:
        if _same(delta, candidate):
            raise STEP.fail(f"wrong update on {case}. Likely mistake: {hint}")
    abs_err, _ = max_diff(delta, expected)
    raise STEP.fail(
        f"wrong update on {case}: the parameters moved by up to {abs_err:.3g} away from one step "
        "of lm + aux_coef * aux + z_coef * z (no gradient clipping, no other loss)"
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return is_close(a, b, ATOL, RTOL)


def _diagnose_reported(got: list[float], lm: float, aux: float, z: float) -> None:
    ok = [_close(g, e) for g, e in zip(got, (lm, aux, z))]
    if all(ok):
        return
    got_lm, got_aux, got_z = got
    if not ok[0]:
        folded = {
            lm + AUX_COEF * aux + Z_COEF * z: "the total",
            lm + AUX_COEF * aux: "lm + aux_coef * aux",
            lm + aux + z: "lm + aux + z",
            lm + aux: "lm + aux",
        }
        for value, name in folded.items():
            if _close(got_lm, value):
                raise STEP.fail(
                    f"the reported lm loss is {name}: the aux loss is folded into the reported "
                    "loss. Report the cross-entropy alone; the router losses go beside it"
                )
        raise STEP.fail(f"the reported lm loss is {got_lm:.6g}, expected {lm:.6g}")
    for i, (name, g, e) in enumerate((("aux", got_aux, aux), ("z", got_z, z))):
        if ok[i + 1]:
            continue
        if _close(g, 2 * e):
            raise STEP.fail(f"the reported {name} is the sum over the MoE layers; report the mean")
        coef = (AUX_COEF, Z_COEF)[i]
        if _close(g, coef * e):
            raise STEP.fail(f"the reported {name} is multiplied by its coefficient; report it raw")
        if _close(g, (aux, z)[1 - i]):
            raise STEP.fail("the reported aux and z are swapped: return (lm, aux, z)")
        raise STEP.fail(f"the reported {name} is {g:.6g}, expected {e:.6g}")


def _close(a: float, b: float, rtol: float = RTOL) -> bool:
    return abs(a - b) <= ATOL + rtol * abs(b)


def _check_evaluate(evaluate_fn: Callable) -> None:
    model = _model(seed=4, weight_std=0.5, noise="gumbel", dropout=0.2)
    x_BS, y_BS = _batch(seed=5, B=4)
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits_BSV, results = ref(x_BS)
        expected = lm_loss(logits_BSV, y_BS).item()
        aux_L = torch.stack([r.aux_loss for r in results])
        z_L = torch.stack([r.z_loss for r in results])
    case = "a TinyLM with Gumbel routing noise and dropout 0.2 (handed over in train mode)"
    got = _number(STEP, STEP.call(evaluate_fn, model, x_BS, y_BS, case=case), "evaluate_loss")
    left_in_eval = not model.training
    if not _close(got, expected, EVAL_RTOL):
        folded = [
            float(expected + aux_L.mean()),
            float(expected + aux_L.mean() + z_L.mean()),
            float(expected + aux_L.sum()),
            float(expected + aux_L.sum() + z_L.sum()),
        ]
        if any(_close(got, v, EVAL_RTOL) for v in folded):
            raise STEP.fail(
                f"evaluate_loss adds the router losses on {case}: the validation loss is the "
                "cross-entropy alone (folding the aux loss in makes a balanced model look worse)"
            )
        model.train()
        again = _number(STEP, STEP.call(evaluate_fn, model, x_BS, y_BS, case=case), "again")
        if not _close(again, got, EVAL_RTOL):
            raise STEP.fail(
                f"evaluate_loss ran the model in train mode on {case}: router noise and dropout "
                "were on (two calls gave different losses). Call model.eval() first"
            )
        raise STEP.fail(f"evaluate_loss on {case} gave {got:.6g}, expected {expected:.6g}")
    if left_in_eval:
        raise STEP.fail(
            "evaluate_loss left the model in eval mode: the training steps after it would run "
            "without router noise and dropout. Put it back with model.train(was_training)"
        )
    model.eval()  # a model found in eval mode stays in eval mode
    STEP.call(evaluate_fn, model, x_BS, y_BS, case="a TinyLM in eval mode")
    if model.training:
        raise STEP.fail(
            "evaluate_loss put a model that was in eval mode into train mode: remember "
            "was_training = model.training first, and restore it with model.train(was_training)"
        )
