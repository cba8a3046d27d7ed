"""Checks for chapter 04 (load balancing): DeepSeek-V3's sequence-wise balance loss, DeepSeek-V2's
device-level balance loss and the collapse metrics (the bias-balancing update's check is in
`ch04_bias`, the capstone's in `ch04_capstone`).

The two losses are not the lesson's Switch loss but its relatives, written from their papers'
formulas: the sequence-wise loss (DeepSeek-V3, arXiv 2412.19437, section 2.1.2, eq. 17-20) takes
f and P over each sequence apart and normalises the sigmoid scores per token; the device-level
loss (DeepSeek-V2, arXiv 2405.04434, section 2.2.3) balances groups of experts (one group per
device) rather than experts. Each check compares the learner's function with a float64 reference
on seeded inputs (sequences that each crowd a different expert, a device placement that is not
contiguous, devices of unequal size, K = 1, K = E) and names the likely mistake by matching known
wrong variants (the batch pooled instead of per sequence, the scores not normalised, a missing
E/K scale, f summed or P averaged over a device's experts, the grouping ignored or assumed
contiguous, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.losses import load_balancing_loss, mixtral_load_balancing_loss
from minimoe.metrics import routing_stats

SEQUENCE = Exercise(
    "04.1",
    "the sequence-wise balance loss",
    library=(load_balancing_loss, mixtral_load_balancing_loss),
)
DEVICE = Exercise(
    "04.2",
    "the device-level balance loss",
    library=(load_balancing_loss, mixtral_load_balancing_loss),
)
METRICS = Exercise("04.3", "collapse metrics", library=(routing_stats,))

ATOL, RTOL = 1e-5, 1e-4


def _scalar(ex: Exercise, out: Any, case: str) -> torch.Tensor:
    if out is None:
        raise ex.fail(f"returned None on {case}: did you forget the `return`?")
    if isinstance(out, float) or (isinstance(out, torch.Tensor) and out.numel() == 1):
        return torch.as_tensor(out, dtype=torch.float64).reshape(())
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise ex.fail(
        f"returned {shape} on {case}; return one number (a 0-d tensor): the loss is a sum over "
        "experts (or devices) of f times P, not a value per token, expert or sequence"
    )


def _expect_differentiable(ex: Exercise, fn: Callable, x: torch.Tensor, *rest, what: str) -> None:
    x = x.clone().requires_grad_(True)
    out = ex.call(fn, x, *rest, case="an input with requires_grad=True")
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise ex.fail(
            f"the loss is cut off from the gradient of {what}: it must train the router, so avoid "
            ".item(), float(...), .detach(), torch.no_grad() and numpy on the way"
        )


def _counts(expert_TK: torch.Tensor, E: int) -> torch.Tensor:
    """c_e: how many of the T*K routed slots go to each expert (float64)."""
    return torch.bincount(expert_TK.reshape(-1), minlength=E).double()


# --- 04.1 the sequence-wise balance loss (DeepSeek-V3) ------------------------------------------


def _sequence_loss(
    scores_BSE: torch.Tensor,
    expert_BSK: torch.Tensor,
    *,
    per_sequence=True,
    P_from="normalised",
    f_scale="E/KS",
    P_reduce="mean",
    over_sequences="mean",
) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise loss in float64, and (with other switches) its wrong variants."""
    s_BSE = scores_BSE.double()
    if not per_sequence:  # the whole batch as one sequence
        s_BSE = s_BSE.reshape(1, -1, s_BSE.shape[-1])
        expert_BSK = expert_BSK.reshape(1, -1, expert_BSK.shape[-1])
    B, S, E = s_BSE.shape
    K = expert_BSK.shape[-1]
    losses = []
    for b in range(B):
        c_E = _counts(expert_BSK[b], E)
        f_E = {"E/KS": E * c_E / (K * S), "1/KS": c_E / (K * S), "E/S": E * c_E / S}[f_scale]
        if P_from == "normalised":
            p_SE = s_BSE[b] / s_BSE[b].sum(-1, keepdim=True)
        elif P_from == "raw":
            p_SE = s_BSE[b]
        elif P_from == "softmax":
            p_SE = s_BSE[b].softmax(-1)
        else:  # the chosen experts' normalised scores only
            p_SE = s_BSE[b] / s_BSE[b].sum(-1, keepdim=True)
            p_SE = torch.zeros_like(p_SE).scatter(1, expert_BSK[b], p_SE.gather(1, expert_BSK[b]))
        P_E = p_SE.mean(0) if P_reduce == "mean" else p_SE.sum(0)
        losses.append((f_E * P_E).sum())
    total = torch.stack(losses)
    return total.mean() if over_sequences == "mean" else total.sum()


def _sequence_variants() -> list[tuple[str, Callable]]:
    def v(**kw):
        return lambda s, e: _sequence_loss(s, e, **kw)

    return [
        (
            "f and P were taken over the whole batch at once; the sequence-wise loss computes "
            "them over each sequence apart (T in eq. 18 and 20 is the tokens of ONE sequence) "
            "and averages the B losses. Pooling the batch hides sequences that each crowd their "
            "own experts",
            v(per_sequence=False),
        ),
        (
            "P uses the raw sigmoid scores; eq. 19 normalises them per token first, "
            "s'_t,e = s_t,e / sum_j s_t,j (sigmoid scores do not sum to 1, so without it the "
            "loss is not 1 at balance)",
            v(P_from="raw"),
        ),
        (
            "P uses a softmax of the scores; the scores are already sigmoid affinities: "
            "normalise them by their sum over the experts, s / s.sum(-1), not with a softmax",
            v(P_from="softmax"),
        ),
        (
            "P uses only the chosen experts' scores (zeros elsewhere); P_e averages the "
            "normalised score of e over EVERY token of the sequence",
            v(P_from="chosen"),
        ),
        (
            "f is the share of the sequence's K*S slots, without the factor E (N_r in eq. 18): "
            "with it f_e = 1 for an even load and the loss is 1 at balance, without it 1/E",
            v(f_scale="1/KS"),
        ),
        (
            "f was not divided by K: f_e = E/(K*S) * count_e (eq. 18), so the loss is 1 at "
            "balance, not K",
            v(f_scale="E/S"),
        ),
        (
            "P summed over the sequence's tokens; P_e is their MEAN (1/T in eq. 20)",
            v(P_reduce="sum"),
        ),
        (
            "the per-sequence losses were summed; take their mean over the B sequences, so the "
            "loss does not grow with the batch",
            v(over_sequences="sum"),
        ),
    ]


def _sequence_inputs(B: int, S: int, E: int, K: int, seed: int, *, crowd: bool):
    """Sigmoid scores of B sequences and their top-K experts; with `crowd`, sequence b favours
    expert b % E (each sequence its own)."""
    logits_BSE = torch.randn(B, S, E, generator=make_generator(seed)) * 1.5
    if crowd:
        for b in range(B):
            logits_BSE[b, :, b % E] += 3.0
    scores_BSE = torch.sigmoid(logits_BSE)
    return scores_BSE, scores_BSE.topk(K, dim=-1).indices


def check_sequence_balance_loss(sequence_balance_loss: Callable) -> None:
    """Check `sequence_balance_loss(scores_BSE, expert_BSK) -> loss` against DeepSeek-V3's
    formula (arXiv 2412.19437, eq. 17-20, without alpha), mean over the B sequences."""
    # (B, S, E, K, crowd): each crowded sequence favours its own expert
    cases = [(4, 16, 8, 2, True), (3, 10, 4, 1, True), (2, 12, 6, 3, False), (1, 8, 4, 4, False)]
    cases += [(5, 1, 5, 2, False), (2, 9, 5, 2, True)]
    variants = _sequence_variants()
    for i, (B, S, E, K, crowd) in enumerate(cases):
        scores_BSE, expert_BSK = _sequence_inputs(B, S, E, K, seed=140 + i, crowd=crowd)
        case = f"B={B} sequences of S={S} tokens, E={E}, K={K}"
        case += ", each sequence crowding its own expert" if crowd else ""
        out = SEQUENCE.call(
            sequence_balance_loss, scores_BSE.clone(), expert_BSK.clone(), case=case
        )
        got = _scalar(SEQUENCE, out, case)
        expected = _sequence_loss(scores_BSE, expert_BSK)
        diagnose(SEQUENCE, got, expected, variants, (scores_BSE, expert_BSK), case,
                 atol=ATOL, rtol=RTOL)  # fmt: skip
    # balance: every expert equally chosen in every sequence, equal scores -> exactly 1
    E, K, S = 4, 2, 4
    expert_BSK = torch.tensor([[[0, 1], [2, 3], [1, 0], [3, 2]]] * 2)
    scores_BSE = torch.full((2, S, E), 0.3)
    out = SEQUENCE.call(sequence_balance_loss, scores_BSE, expert_BSK, case="balance")
    got = _scalar(SEQUENCE, out, "balance")
    if not math.isclose(float(got), 1.0, abs_tol=1e-5):
        raise SEQUENCE.fail(
            f"at perfect balance (every expert chosen equally often in each sequence, equal "
            f"scores) the loss must be 1.0, got {float(got):.4g}"
        )
    _expect_differentiable(SEQUENCE, sequence_balance_loss, scores_BSE, expert_BSK,
                           what="the scores")  # fmt: skip
    SEQUENCE.passed(f"{len(cases)} batches and the balanced value 1")


# --- 04.2 the device-level balance loss (DeepSeek-V2) -------------------------------------------


def _device_loss(
    probs_TE: torch.Tensor,
    expert_TK: torch.Tensor,
    device_E: torch.Tensor,
    *,
    f_reduce="mean",
    P_reduce="sum",
    f_scale="E/KT",
    placement="given",
) -> torch.Tensor:
    """DeepSeek-V2's device-level loss in float64, and (with other switches) its wrong variants."""
    T, E = probs_TE.shape
    K = expert_TK.shape[1]
    G = int(device_E.max()) + 1
    if placement == "contiguous":  # expert e on device e // (E / G), whatever device_E says
        device_E = torch.arange(E) // math.ceil(E / G)
    elif placement == "experts":  # every expert its own device: the expert-level loss
        device_E, G = torch.arange(E), E
    c_E = _counts(expert_TK, E)
    f_E = {"E/KT": E * c_E / (K * T), "1/KT": c_E / (K * T)}[f_scale]
    P_E = probs_TE.double().mean(0)
    loss = probs_TE.new_zeros((), dtype=torch.float64)
    for g in range(G):
        on_g = device_E == g
        if not on_g.any():
            continue
        f_g = f_E[on_g].mean() if f_reduce == "mean" else f_E[on_g].sum()
        P_g = P_E[on_g].sum() if P_reduce == "sum" else P_E[on_g].mean()
        loss = loss + f_g * P_g
    return loss


def _device_variants() -> list[tuple[str, Callable]]:
    def v(**kw):
        return lambda p, e, d: _device_loss(p, e, d, **kw)

    return [
        (
            "f' summed the f_e of the device's experts; f'_i is their MEAN (1/|E_i| times the "
            "sum), so an even load gives f' = 1 on every device",
            v(f_reduce="sum"),
        ),
        (
            "P' averaged the P_e of the device's experts; P'_i is their SUM: the probability "
            "that a token's router mass lands on device i",
            v(P_reduce="mean"),
        ),
        (
            "the grouping was ignored: this is the expert-level (Switch) loss; sum over the "
            "DEVICES of f'_i * P'_i, with f' and P' gathered over each device's experts",
            v(placement="experts"),
        ),
        (
            "expert e was put on device e // (E/G), a contiguous placement; use device_E, which "
            "says where each expert is (here not contiguous, or of unequal sizes)",
            v(placement="contiguous"),
        ),
        (
            "f_e is the share of the K*T slots, without the factor E: f_e = E/(K*T) * count_e, "
            "which is 1 for an even load",
            v(f_scale="1/KT"),
        ),
    ]


def check_device_balance_loss(device_balance_loss: Callable) -> None:
    """Check `device_balance_loss(probs_TE, expert_TK, device_E) -> loss` against DeepSeek-V2's
    device-level balance loss (arXiv 2405.04434, section 2.2.3, without alpha_2)."""
    cases = [
        ("E=8 on 4 devices in pairs, K=2", 48, 8, 2, [0, 0, 1, 1, 2, 2, 3, 3], 1),
        ("E=8 on 2 devices, placed alternately, K=2", 40, 8, 2, [0, 1] * 4, 2),
        ("E=6 on 3 devices of sizes 1, 2 and 3, K=2", 36, 6, 2, [2, 1, 2, 0, 1, 2], 3),
        ("E=4 on 2 devices, K=1", 20, 4, 1, [1, 0, 0, 1], None),
        ("E=4 on 2 devices, K=4", 6, 4, 4, [0, 0, 1, 1], None),
        ("E=6, every expert its own device, K=2", 24, 6, 2, [3, 0, 5, 1, 4, 2], 0),
    ]
    variants = _device_variants()
    for i, (case, T, E, K, placement, hot) in enumerate(cases):
        logits_TE = torch.randn(T, E, generator=make_generator(160 + i)) * 1.5
        if hot is not None:
            logits_TE[:, hot] += 2.5
        probs_TE = logits_TE.softmax(-1)
        expert_TK = logits_TE.topk(K, dim=-1).indices
        device_E = torch.tensor(placement)
        args = (probs_TE, expert_TK, device_E)
        out = DEVICE.call(device_balance_loss, *(a.clone() for a in args), case=case)
        got = _scalar(DEVICE, out, case)
        diagnose(DEVICE, got, _device_loss(*args), variants, args, case, atol=ATOL, rtol=RTOL)
    # balance: each device's experts together get an even share, probabilities uniform -> 1
    expert_TK = torch.tensor([[0, 2], [1, 3], [0, 3], [1, 2]])
    probs_TE = torch.full((4, 4), 0.25)
    device_E = torch.tensor([0, 0, 1, 1])
    out = DEVICE.call(device_balance_loss, probs_TE, expert_TK, device_E, case="balance")
    got = _scalar(DEVICE, out, "balance")
    if not math.isclose(float(got), 1.0, abs_tol=1e-5):
        raise DEVICE.fail(f"at perfect balance the loss must be 1.0, got {float(got):.4g}")
    _expect_differentiable(DEVICE, device_balance_loss, probs_TE, expert_TK, device_E,
                           what="probs_TE")  # fmt: skip
    DEVICE.passed(f"{len(cases)} placements, uneven devices included, and the balanced value 1")


# --- 04.3 collapse metrics ----------------------------------------------------------------------


def _metrics_ref(expert_TK: torch.Tensor, E: int) -> torch.Tensor:
    s = routing_stats(expert_TK, E)
    return torch.tensor([s.dead_experts, s.max_over_mean, s.load_entropy], dtype=torch.float64)


def _metric_variants() -> list[tuple[str, Callable]]:
    def form(expert_TK, E, *, minlength=True, dead_le=0, mean_over="E", shares=True, log=math.log):
        counts = torch.bincount(expert_TK.reshape(-1), minlength=E if minlength else 0).double()
        dead = float((counts <= dead_le).sum())
        mean = counts.mean() if mean_over == "E" else counts.sum() / expert_TK.shape[0]
        q = counts / counts.sum() if shares else counts
        ent = -(q * q.clamp_min(1e-30).log()).sum() / (math.log(2) if log is math.log2 else 1)
        return torch.tensor([dead, float(counts.max() / mean), float(ent)], dtype=torch.float64)

    return [
        (
            "torch.bincount without minlength=E: experts after the last one chosen are missing, "
            "so dead experts are not counted and the mean load is wrong",
            lambda e, E: form(e, E, minlength=False),
        ),
        (
            "an expert is dead when it gets 0 slots (count == 0), not when it gets at most 1",
            lambda e, E: form(e, E, dead_le=1),
        ),
        (
            "max/mean divides the largest count by the mean count PER EXPERT (T*K/E), not per "
            "token",
            lambda e, E: form(e, E, mean_over="T"),
        ),
        (
            "the load entropy is computed from counts; normalise them to shares q_e = c_e / sum "
            "first (a distribution over experts)",
            lambda e, E: form(e, E, shares=False),
        ),
        ("the load entropy is in bits (log2); use nats (natural log), so that log E means even",
         lambda e, E: form(e, E, log=math.log2)),
    ]  # fmt: skip


def check_collapse_metrics(collapse_metrics: Callable) -> None:
    """Check `collapse_metrics(expert_TK, n_experts) -> (dead_experts, max_over_mean,
    load_entropy)` against `minimoe.routing_stats`."""
    g = make_generator(60)
    cases = [
        ("balanced, E=4, K=2", torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0]]), 4),
        ("random, E=6, K=2", torch.rand(20, 6, generator=g).argsort(-1)[:, :2], 6),
        ("the last two experts unused, E=5, K=1", torch.randint(0, 3, (12, 1), generator=g), 5),
        ("every token on expert 2, E=4, K=1", torch.full((9, 1), 2), 4),
        ("collapsed onto experts 0 and 1, E=8, K=2", torch.tensor([[0, 1]] * 7 + [[1, 5]]), 8),
        ("T=1, E=3, K=3", torch.tensor([[2, 0, 1]]), 3),
    ]
    variants = _metric_variants()
    for case, expert_TK, E in cases:
        out = METRICS.call(collapse_metrics, expert_TK.clone(), E, case=case)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise METRICS.fail(
                f"return three numbers (dead_experts, max_over_mean, load_entropy) on {case}"
            )
        try:
            got = torch.tensor([float(v) for v in out], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise METRICS.fail(f"return three numbers (plain or 0-d tensors) on {case}") from None
        if got.isnan().any():
            raise METRICS.fail(
                f"a NaN on {case}: 0 * log(0) is NaN in floating point; an expert with a share "
                "of 0 adds 0 to the entropy (clamp the share, or drop the zeros, before the log)"
            )
        diagnose(METRICS, got, _metrics_ref(expert_TK, E), variants, (expert_TK, E), case,
                 atol=1e-6, rtol=1e-5)  # fmt: skip
    METRICS.passed(f"{len(cases)} routings, from balanced to collapsed")
