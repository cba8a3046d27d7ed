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
    check_device_balance_loss,
    check_sequence_balance_loss,
)

# --- 04.1 the sequence-wise balance loss -------------------------------------------------------


def sequence_loss(scores_BSE, expert_BSK, *, pool=False, normalise="sum", scale="E/KS",
                  P="mean", over="mean", detach=False):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    if pool:
        scores_BSE = scores_BSE.reshape(1, -1, scores_BSE.shape[-1])
        expert_BSK = expert_BSK.reshape(1, -1, expert_BSK.shape[-1])
    B, S, E = scores_BSE.shape
    K = expert_BSK.shape[-1]
    if normalise == "sum":
        p_BSE = scores_BSE / scores_BSE.sum(-1, keepdim=True)
    elif normalise == "softmax":
        p_BSE = scores_BSE.softmax(-1)
    else:
        p_BSE = scores_BSE
    if P == "chosen":
        p_BSE = p_BSE * F.one_hot(expert_BSK, E).sum(2)
    count_BE = F.one_hot(expert_BSK, E).sum((1, 2)).float()
    f_BE = {"E/KS": count_BE * E / (K * S), "1/KS": count_BE / (K * S), "E/S": count_BE * E / S}[
        scale
    ]
    P_BE = p_BSE.sum(1) if P == "sum" else p_BSE.mean(1)
    if detach:
        P_BE = P_BE.detach()
    per_sequence_B = (f_BE * P_BE).sum(-1)
    return per_sequence_B.sum() if over == "sum" else per_sequence_B.mean()


def sequence_with(**kw):
    return lambda s, e: sequence_loss(s, e, **kw)


def test_sequence_passes(capsys) -> None:
    check_sequence_balance_loss(sequence_loss)
    assert "✓ Exercise 04.1 (the sequence-wise balance loss): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (sequence_with(pool=True), ["whole batch", "ONE sequence"]),
        (sequence_with(normalise="none"), ["raw sigmoid", "eq. 19"]),
        (sequence_with(normalise="softmax"), ["softmax"]),
        (sequence_with(P="chosen"), ["chosen experts"]),
        (sequence_with(scale="1/KS"), ["without the factor E"]),
        (sequence_with(scale="E/S"), ["not divided by K"]),
        (sequence_with(P="sum"), ["MEAN"]),
        (sequence_with(over="sum"), ["summed", "B sequences"]),
        (sequence_with(detach=True), ["gradient"]),
        (
            lambda s, e: torch.stack(
                [sequence_loss(s[b : b + 1], e[b : b + 1]) for b in range(s.shape[0])]
            ),
            ["one number"],
        ),  # fmt: skip
        (lambda s, e: None, ["return"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_sequence_wrong(answer, words) -> None:
    fails_with(check_sequence_balance_loss, answer, "Exercise 04.1", *words)


def test_sequence_unknown_mistake_reports_the_difference() -> None:
    message = fails_with(check_sequence_balance_loss, lambda s, e: sequence_loss(s, e) * 1.1)
    assert "max abs diff" in message


# --- 04.2 the device-level balance loss ----------------------------------------------------------


def device_loss(probs_TE, expert_TK, device_E, *, f="mean", P="sum", ignore_devices=False,
                contiguous=False, times_E=True):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    T, E = probs_TE.shape
    K = expert_TK.shape[1]
    if ignore_devices:
        device_E = torch.arange(E)
    G = int(device_E.max()) + 1
    if contiguous:
        device_E = torch.arange(E) // (E // G)
    f_E = F.one_hot(expert_TK, E).sum((0, 1)).float() / (K * T) * (E if times_E else 1)
    P_E = probs_TE.mean(0)
    loss = 0.0
    for g in range(G):
        mine = device_E == g
        f_g = f_E[mine].sum() if f == "sum" else f_E[mine].mean()
        P_g = P_E[mine].mean() if P == "mean" else P_E[mine].sum()
        loss = loss + f_g * P_g
    return loss


def device_with(**kw):
    return lambda p, e, d: device_loss(p, e, d, **kw)


def test_device_passes(capsys) -> None:
    check_device_balance_loss(device_loss)
    assert "✓ Exercise 04.2 (the device-level balance loss): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (device_with(f="sum"), ["f' summed", "MEAN"]),
        (device_with(P="mean"), ["P' averaged", "SUM"]),
        (device_with(ignore_devices=True), ["grouping was ignored"]),
        (device_with(contiguous=True), ["contiguous", "device_E"]),
        (device_with(times_E=False), ["without the factor E"]),
        (lambda p, e, d: device_loss(p, e, d).detach(), ["gradient"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_device_wrong(answer, words) -> None:
    fails_with(check_device_balance_loss, answer, "Exercise 04.2", *words)


def test_device_loss_is_the_switch_loss_of_the_merged_routing() -> None:
    """With equal devices the device-level loss is the Switch loss of the routing in which each
    device's experts are merged into one (the identity the problem set's hint and its last cell
    use)."""
    from minimoe import load_balancing_loss

    g = torch.Generator().manual_seed(3)
    logits_TE = torch.randn(40, 8, generator=g)
    probs_TE, expert_TK = logits_TE.softmax(-1), logits_TE.topk(2, dim=-1).indices
    device_E = torch.tensor([0, 1, 2, 3] * 2)
    merged_TG = torch.zeros(40, 4).index_add(1, device_E, probs_TE)
    merged = load_balancing_loss(merged_TG, device_E[expert_TK])
    assert torch.allclose(device_loss(probs_TE, expert_TK, device_E), merged, atol=1e-6)


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
    from minimoe.course.checks import ch04_bias, ch04_capstone
    from minimoe.course.checks import ch04_losses as ch04

    assert_check_cells_match(
        ["04_balancing.ipynb"],
        (ch04.SEQUENCE, ch04.DEVICE, ch04.METRICS, ch04_bias.BIAS, ch04_capstone.CAPSTONE),
        "from minimoe.course.checks.ch04_",
    )


@pytest.mark.parametrize(
    "check, answer, words",
    [
        (check_sequence_balance_loss, "load_balancing_loss", ["library's own"]),
        (check_sequence_balance_loss, "wrapped_lb", ["calls the library's own"]),
        (check_device_balance_loss, "wrapped_device", ["calls the library's own"]),
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
        "wrapped_lb": lambda s, e: minimoe.load_balancing_loss(
            (s / s.sum(-1, keepdim=True)).flatten(0, 1), e.flatten(0, 1), group_size=s.shape[1]
        ),
        "wrapped_device": lambda p, e, d: minimoe.load_balancing_loss(p, e),
        "wrapped_stats": wrapped_stats,
    }
    fails_with(check, answers[answer], *words)
