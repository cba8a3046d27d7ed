"""The chapter 04 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe.course.checks.ch04_bias import check_bias_balancing
from minimoe.course.checks.ch04_losses import (
    check_collapse_metrics,
    check_switch_loss,
    check_z_loss,
)

# --- 04.1 the Switch loss ------------------------------------------------------------------------


def switch_loss(probs_TE, expert_TK, *, times_E=True, first=False, divide_k=True, P="mean",
                detach=False, flat_mean=False):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    T, E = probs_TE.shape
    chosen = expert_TK[:, :1] if first else expert_TK
    mask_TE = F.one_hot(chosen, E).sum(1).float()  # K-hot
    f_E = mask_TE.mean(0) / (chosen.shape[1] if divide_k else 1)
    if P == "mean":
        P_E = probs_TE.mean(0)
    elif P == "sum":
        P_E = probs_TE.sum(0)
    else:  # the chosen experts' probabilities only
        P_E = (probs_TE * mask_TE).mean(0)
    if detach:
        P_E = P_E.detach()
    if flat_mean:
        return E * (f_E * P_E).mean()
    return (E if times_E else 1) * (f_E * P_E).sum()


def switch_with(**kw):
    return lambda p, e: switch_loss(p, e, **kw)


def test_switch_passes(capsys) -> None:
    check_switch_loss(switch_loss)
    assert "✓ Exercise 04.1 (the Switch load-balancing loss): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (switch_with(times_E=False), ["factor E is missing"]),
        (switch_with(flat_mean=True), ["mean over experts"]),
        (switch_with(first=True), ["first choice"]),
        (switch_with(divide_k=False), ["not divided by K", "Mixtral"]),
        (switch_with(P="sum"), ["summed over tokens"]),
        (switch_with(P="masked"), ["chosen experts"]),
        (switch_with(detach=True), ["gradient"]),
        (lambda p, e: switch_loss(p, e) * torch.ones(3), ["one number"]),
        (lambda p, e: p.shape[1] * (p.mean(0) ** 2).sum(), ["f_e counts the routed slots"]),
        (lambda p, e: None, ["return"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_switch_wrong(answer, words) -> None:
    fails_with(check_switch_loss, answer, "Exercise 04.1", *words)


def test_switch_unknown_mistake_reports_the_difference() -> None:
    assert "max abs diff" in fails_with(check_switch_loss, lambda p, e: switch_loss(p, e) * 1.1)


# --- 04.2 the z-loss -----------------------------------------------------------------------------


def test_z_passes(capsys) -> None:
    check_z_loss(lambda l: (torch.logsumexp(l, dim=-1) ** 2).mean())
    assert "✓ Exercise 04.2 (the router z-loss): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda l: (l.max(-1).values ** 2).mean(), ["max logit"]),
        (lambda l: torch.logsumexp(l, -1).mean(), ["forgot the square"]),
        (lambda l: (torch.logsumexp(l, -1) ** 2).sum(), ["summed over tokens"]),
        (lambda l: torch.logsumexp(l, -1).mean() ** 2, ["squared the mean"]),
        (lambda l: (torch.logsumexp(l, 0) ** 2).mean(), ["dim=0"]),
        (lambda l: torch.logsumexp(l**2, -1).mean(), ["before the logsumexp"]),
        (lambda l: (torch.logsumexp(l.softmax(-1), -1) ** 2).mean(), ["raw logits"]),
        (lambda l: (l.exp().sum(-1).log() ** 2).mean(), ["overflows", "torch.logsumexp"]),
        (lambda l: torch.tensor(float((torch.logsumexp(l, -1) ** 2).mean())), ["gradient"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_z_wrong(answer, words) -> None:
    fails_with(check_z_loss, answer, "Exercise 04.2", *words)


# --- 04.3 collapse metrics -----------------------------------------------------------------------


def collapse_metrics(expert_TK, n_experts, *, minlength=True, dead_le=0, per_token=False,
                     counts=False, log=torch.log, clamp=True):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    c = torch.bincount(expert_TK.flatten(), minlength=n_experts if minlength else 0).float()
    dead = int((c <= dead_le).sum())
    mean = c.sum() / expert_TK.shape[0] if per_token else c.mean()
    q = c if counts else c / c.sum()
    logq = log(q.clamp_min(1e-12)) if clamp else log(q)
    return dead, float(c.max() / mean), float(-(q * logq).sum())


def metrics_with(**kw):
    return lambda e, E: collapse_metrics(e, E, **kw)


def test_metrics_passes(capsys) -> None:
    check_collapse_metrics(collapse_metrics)
    assert "✓ Exercise 04.3 (collapse metrics): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (metrics_with(minlength=False), ["minlength=E"]),
        (metrics_with(dead_le=1), ["count == 0"]),
        (metrics_with(per_token=True), ["PER EXPERT"]),
        (metrics_with(counts=True), ["shares"]),
        (metrics_with(log=torch.log2), ["bits"]),
        (metrics_with(clamp=False), ["NaN", "0 * log(0)"]),
        (lambda e, E: collapse_metrics(e, E)[:2], ["three numbers"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_metrics_wrong(answer, words) -> None:
    fails_with(check_collapse_metrics, answer, "Exercise 04.3", *words)


# --- 04.4 bias balancing -------------------------------------------------------------------------


def update_bias(bias_E, expert_TK, gate_TK, rate, *, flip=False, gates=False, sign=True,
                minlength=True):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    E = bias_E.numel()
    if gates:
        load_E = torch.zeros(E).index_add_(0, expert_TK.flatten(), gate_TK.flatten())
    else:
        load_E = torch.bincount(expert_TK.flatten(), minlength=E if minlength else 0).float()
    step = load_E.mean() - load_E
    step = torch.sign(step) if sign else step
    return bias_E - rate * step if flip else bias_E + rate * step


def biased_topk(logits_TE, bias_E, k, *, gate_biased=False, softmax=False, renorm=True,
                use_bias=True):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    s = logits_TE.softmax(-1) if softmax else torch.sigmoid(logits_TE)
    expert_TK = (s + bias_E if use_bias else s).topk(k, dim=-1).indices
    g = (s + bias_E if gate_biased else s).gather(1, expert_TK)
    return expert_TK, g / g.sum(-1, keepdim=True) if renorm else g


def test_bias_passes(capsys) -> None:
    check_bias_balancing(update_bias, biased_topk)
    assert "✓ Exercise 04.4 (the bias-balancing update): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "update, topk, words",
    [
        (lambda *a: update_bias(*a, flip=True), biased_topk, ["sign is flipped"]),
        (lambda *a: update_bias(*a, sign=False), biased_topk, ["take its sign"]),
        (lambda *a: update_bias(*a, minlength=False), biased_topk, ["minlength"]),
        (lambda *a: update_bias(*a, gates=True), biased_topk, ["gate weights", "bincount"]),
        (update_bias, lambda l, b, k: biased_topk(l, b, k, gate_biased=True), ["SELECTION only"]),
        (update_bias, lambda l, b, k: biased_topk(l, b, k, use_bias=False), ["top-k of s + b"]),
        (update_bias, lambda l, b, k: biased_topk(l, b, k, softmax=True), ["sigmoid"]),
        (update_bias, lambda l, b, k: biased_topk(l, b, k, renorm=False), ["renormalise"]),
        (not_done, biased_topk, ["not solved yet"]),
        (update_bias, not_done, ["not solved yet"]),
    ],
)
def test_bias_wrong(update, topk, words) -> None:
    fails_with(lambda _: check_bias_balancing(update, topk), None, "Exercise 04.4", *words)


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/04 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch04_bias
    from minimoe.course.checks import ch04_losses as ch04

    assert_check_cells_match(
        ["04_balancing.ipynb"],
        (ch04.SWITCH, ch04.ZLOSS, ch04.METRICS, ch04_bias.BIAS),
        "from minimoe.course.checks.ch04_",
    )


def test_switch_P_over_the_wrong_axis_names_the_axis() -> None:
    """P averaged over the experts (one value per token) crashes against f (one per expert): the
    hint is about the axis, not about weights (a loss has none)."""

    def answer(probs_TE, expert_TK):
        E = probs_TE.shape[1]
        f_E = torch.bincount(expert_TK.reshape(-1), minlength=E).float() / expert_TK.numel()
        return E * (f_E * probs_TE.mean(1)).sum()

    message = fails_with(check_switch_loss, answer, "Exercise 04.1", "length T=64", "mean(0)")
    assert "weights" not in message and "nn.Linear" not in message


def test_switch_P_over_the_experts_broadcast_is_named() -> None:
    def answer(probs_TE, expert_TK):
        E = probs_TE.shape[1]
        f_E = torch.bincount(expert_TK.reshape(-1), minlength=E).float() / expert_TK.numel()
        return E * (f_E * probs_TE.mean(1, keepdim=True)).sum()

    fails_with(check_switch_loss, answer, "Exercise 04.1", "averaged over the experts (dim=1)")


def test_switch_bincount_without_minlength_crash_is_named() -> None:
    def answer(probs_TE, expert_TK):
        E = probs_TE.shape[1]
        f_E = torch.bincount(expert_TK.reshape(-1)).float() / expert_TK.numel()
        return E * (f_E * probs_TE.mean(0)).sum()

    message = fails_with(check_switch_loss, answer, "Exercise 04.1", "minlength=E")
    assert "weights" not in message


def test_a_shape_crash_without_weights_gets_no_weight_hint() -> None:
    message = fails_with(check_z_loss, lambda l: (l @ l).mean(), "Exercise 04.2", "shapes")
    assert "weights" not in message and "nn.Linear" not in message


@pytest.mark.parametrize(
    "check, answer, words",
    [
        (check_switch_loss, "load_balancing_loss", ["library's own `load_balancing_loss`"]),
        (check_switch_loss, "wrapped_lb", ["calls the library's own `load_balancing_loss`"]),
        (check_z_loss, "z_loss", ["library's own `z_loss`"]),
        (check_z_loss, "wrapped_z", ["calls the library's own `z_loss`"]),
        (check_collapse_metrics, "wrapped_stats", ["calls the library's own `routing_stats`"]),
    ],
)
def test_checks_refuse_the_library(check, answer, words) -> None:
    import minimoe

    def wrapped_stats(expert_TK, E):
        s = minimoe.routing_stats(expert_TK, E)
        return s.dead_experts, s.max_over_mean, s.load_entropy

    answers = {
        "load_balancing_loss": minimoe.load_balancing_loss,
        "wrapped_lb": lambda p, e: minimoe.load_balancing_loss(p, e),
        "z_loss": minimoe.z_loss,
        "wrapped_z": lambda l: 1.0 * minimoe.z_loss(l),
        "wrapped_stats": wrapped_stats,
    }
    fails_with(check, answers[answer], *words)
