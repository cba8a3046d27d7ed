"""Checks for chapter 04 (load balancing): the Switch loss, the z-loss and the collapse metrics
(the bias-balancing update's check is in `ch04_bias`).

Each check compares the learner's function with the library (`minimoe.load_balancing_loss`,
`minimoe.z_loss`, `minimoe.routing_stats`) on seeded inputs: a balanced and a collapsed routing,
an expert with no slot (the last one too), K = 1, K = E, T = 1. A wrong answer is matched against
known wrong variants (a missing ×E, f from the first choice only, f not divided by K, token
probabilities not averaged, max instead of logsumexp, no square, a sum over tokens, counts
instead of shares, bincount without minlength, P averaged over the experts instead of the tokens,
...) and the message names the mistake. A crash from vectors of different lengths is explained by
their lengths: T means a mean over the wrong axis, fewer than E a bincount without minlength.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.losses import load_balancing_loss, mixtral_load_balancing_loss, z_loss
from minimoe.metrics import routing_stats


def _switch_crash(error: Exception, args: tuple) -> str:
    """Name the mistake behind "size of tensor a (X) must match ... b (Y)" from X and Y."""
    sizes = re.findall(r"size of tensor \w \((\d+)\)", str(error))
    if len(sizes) != 2 or not isinstance(args[0], torch.Tensor) or args[0].dim() != 2:
        return ""
    T, E = args[0].shape
    lengths = {int(n) for n in sizes}
    if T in lengths and T != E:
        return (
            f". Likely mistake: a vector of length T={T}, one value per token, where the formula "
            f"needs one per expert (E={E}): P_e is the mean over the tokens of each expert's "
            "probability, probs_TE.mean(0) (dim=0 runs over the T rows); probs_TE.mean(1) "
            "averages over the experts instead"
        )
    if any(n < E for n in lengths):
        return (
            f". Likely mistake: a vector shorter than E={E}: torch.bincount stops at the largest "
            "expert id it sees; pass minlength=E so that every expert gets a count (0 if unused)"
        )
    return ""


SWITCH = Exercise(
    "04.1",
    "the Switch load-balancing loss",
    library=(load_balancing_loss, mixtral_load_balancing_loss),
    explain=_switch_crash,
)
ZLOSS = Exercise("04.2", "the router z-loss", library=(z_loss,))
METRICS = Exercise("04.3", "collapse metrics", library=(routing_stats,))

ATOL, RTOL = 1e-5, 1e-4


def _routing(
    T: int, E: int, K: int, seed: int, *, hot: int | None = None, cold: bool = False, scale=1.5
):
    """Seeded router logits and their top-K experts; `hot` adds a large logit to one expert,
    `cold` a large negative one to the last expert (chosen by no token)."""
    g = make_generator(seed)
    logits_TE = torch.randn(T, E, generator=g) * scale
    if hot is not None:
        logits_TE[:, hot] += 4.0
    if cold:
        logits_TE[:, -1] -= 8.0
    expert_TK = logits_TE.topk(K, dim=-1).indices
    return logits_TE, expert_TK


def _scalar(ex: Exercise, out: Any, case: str) -> torch.Tensor:
    if out is None:
        raise ex.fail(f"returned None on {case}: did you forget the `return`?")
    if isinstance(out, float) or (isinstance(out, torch.Tensor) and out.numel() == 1):
        return torch.as_tensor(out, dtype=torch.float64).reshape(())
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise ex.fail(
        f"returned {shape} on {case}; return one number (a 0-d tensor): the loss is a mean or a "
        "sum over tokens and experts, not a value per token or per expert"
    )


def _expect_differentiable(ex: Exercise, fn: Callable, x: torch.Tensor, *rest, what: str) -> None:
    x = x.clone().requires_grad_(True)
    out = ex.call(fn, x, *rest, case="an input with requires_grad=True")
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise ex.fail(
            f"the loss is cut off from the gradient of {what}: it must train the router, so avoid "
            ".item(), float(...), .detach(), torch.no_grad() and numpy on the way"
        )


# --- 04.1 the Switch loss -----------------------------------------------------------------------


def _f_E(expert_TK: torch.Tensor, E: int, *, first_only=False, per_token=False) -> torch.Tensor:
    chosen_TK = expert_TK[:, :1] if first_only else expert_TK
    counts_E = torch.bincount(chosen_TK.reshape(-1), minlength=E).double()
    return counts_E / expert_TK.shape[0] / (1 if per_token else chosen_TK.shape[1])


def _switch_variants() -> list[tuple[str, Callable]]:
    def form(probs, expert, *, first_only=False, per_token=False, times_E=True, P=None):
        E = probs.shape[1]
        f_E = _f_E(expert, E, first_only=first_only, per_token=per_token)
        P_E = probs.double().mean(0) if P is None else P(probs.double(), expert)
        return (E if times_E else 1) * (f_E * P_E).sum()

    def masked_P(probs, expert):  # the probabilities of the chosen experts only
        return torch.zeros_like(probs).scatter(1, expert, probs.gather(1, expert)).mean(0)

    return [
        (
            "the factor E is missing (or you took the mean over experts where the formula sums): "
            "loss = E * sum_e f_e * P_e, which is 1 when the load is even",
            lambda p, e: form(p, e, times_E=False),
        ),
        (
            "f counts only each token's first choice; here f_e is the share of ALL T*K routed "
            "slots that go to e (DeepSpeed topk and minimoe's default; the first-choice form is "
            "Switch's top-1 and DeepSpeed top2's)",
            lambda p, e: form(p, e, first_only=True),
        ),
        (
            "f was not divided by K: counting all K choices per token makes the f_e sum to K, "
            "and the loss K at balance (that is HF Mixtral's form); divide by T*K",
            lambda p, e: form(p, e, per_token=True),
        ),
        (
            "P_e must be the mean over tokens of the full softmax probability of e; you summed "
            "over tokens instead of averaging",
            lambda p, e: form(p, e, P=lambda q, _: q.sum(0)),
        ),
        (
            "P_e uses only the probabilities of the chosen experts (zeros elsewhere); use the "
            "full probs_TE of every token",
            lambda p, e: form(p, e, P=masked_P),
        ),
        (
            "P was averaged over the experts (dim=1), one value per token, and broadcast against "
            "f: P_e is the mean over the TOKENS of each expert's probability, probs_TE.mean(0), "
            "one value per expert",
            lambda p, e: form(p, e, P=lambda q, _: q.mean(1, keepdim=True)),
        ),
        (
            "f and P were swapped in their roles or both taken from the probabilities: f_e counts "
            "the routed slots (from expert_TK), P_e averages probs_TE",
            lambda p, e: p.shape[1] * (p.double().mean(0) ** 2).sum(),
        ),
    ]


def check_switch_loss(switch_loss: Callable) -> None:
    """Check `switch_loss(probs_TE, expert_TK) -> loss` against `minimoe.load_balancing_loss`."""
    # (T, E, K, hot expert); the last case leaves the last expert without a slot
    cases = [(64, 4, 2, None), (32, 8, 1, None), (48, 6, 2, 3), (16, 4, 4, None), (1, 5, 2, None)]
    cases += [(24, 5, 2, "cold")]
    variants = _switch_variants()
    for i, (T, E, K, hot) in enumerate(cases):
        cold = hot == "cold"
        hot = None if cold else hot
        logits_TE, expert_TK = _routing(T, E, K, seed=40 + i, hot=hot, cold=cold)
        probs_TE = logits_TE.softmax(-1)
        case = f"T={T}, E={E}, K={K}" + (f", most tokens on expert {hot}" if hot else "")
        case += f", expert {E - 1} chosen by no token" if cold else ""
        out = SWITCH.call(switch_loss, probs_TE.clone(), expert_TK.clone(), case=case)
        got = _scalar(SWITCH, out, case)
        expected = load_balancing_loss(probs_TE.double(), expert_TK)
        diagnose(SWITCH, got, expected, variants, (probs_TE, expert_TK), case, atol=ATOL, rtol=RTOL)
    # at perfect balance (every expert equally chosen, uniform probs) the loss is exactly 1
    E, K = 4, 2
    expert_TK = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])
    probs_TE = torch.full((4, E), 1 / E)
    got = _scalar(SWITCH, SWITCH.call(switch_loss, probs_TE, expert_TK, case="balance"), "balance")
    if not math.isclose(float(got), 1.0, abs_tol=1e-5):
        raise SWITCH.fail(f"at perfect balance the loss must be 1.0, got {float(got):.4g}")
    _expect_differentiable(SWITCH, switch_loss, probs_TE, expert_TK, what="probs_TE")
    SWITCH.passed(f"{len(cases)} cases and the balanced value 1")


# --- 04.2 the z-loss ----------------------------------------------------------------------------


def _z_variants() -> list[tuple[str, Callable]]:
    return [
        (
            "used the max logit; the z-loss squares logsumexp(logits) (a smooth max)",
            lambda l: (l.double().amax(-1) ** 2).mean(),
        ),
        ("forgot the square: mean over tokens of logsumexp(logits)**2",
         lambda l: torch.logsumexp(l.double(), -1).mean()),
        (
            "summed over tokens; the z-loss is the MEAN over tokens of logsumexp(logits)**2",
            lambda l: (torch.logsumexp(l.double(), -1) ** 2).sum(),
        ),
        (
            "squared the mean instead of averaging the squares: mean_t(lse_t ** 2), not "
            "mean_t(lse_t) ** 2",
            lambda l: torch.logsumexp(l.double(), -1).mean() ** 2,
        ),
        (
            "logsumexp ran over the tokens (dim=0); it runs over the experts (dim=-1)",
            lambda l: (torch.logsumexp(l.double(), 0) ** 2).mean(),
        ),
        (
            "squared the logits before the logsumexp; square logsumexp(logits) afterwards",
            lambda l: torch.logsumexp(l.double() ** 2, -1).mean(),
        ),
        (
            "took logsumexp of the softmax probabilities; the z-loss works on the raw logits",
            lambda l: (torch.logsumexp(l.double().softmax(-1), -1) ** 2).mean(),
        ),
    ]  # fmt: skip


def check_z_loss(z_loss_fn: Callable) -> None:
    """Check `z_loss(logits_TE) -> loss` against `minimoe.z_loss`, large logits included."""
    cases = [(16, 4, 1.0), (8, 8, 3.0), (1, 3, 1.0), (12, 5, 0.0), (6, 4, 60.0)]
    variants = _z_variants()
    for i, (T, E, scale) in enumerate(cases):
        logits_TE = torch.randn(T, E, generator=make_generator(50 + i)) * scale
        case = f"logits ({T}, {E}) of scale {scale:g}" + (" (all zero)" if scale == 0 else "")
        got = _scalar(ZLOSS, ZLOSS.call(z_loss_fn, logits_TE.clone(), case=case), case)
        expected = z_loss(logits_TE.double())
        if not torch.isfinite(got):
            raise ZLOSS.fail(
                f"returned {float(got)} on {case}: exp(logits) overflows float32 for large "
                "logits; use torch.logsumexp, which subtracts the max first"
            )
        diagnose(ZLOSS, got, expected, variants, (logits_TE,), case, atol=ATOL, rtol=RTOL)
    _expect_differentiable(ZLOSS, z_loss_fn, torch.randn(4, 3), what="the logits")
    ZLOSS.passed(f"{len(cases)} cases, incl. all-zero logits ((log E)^2) and logits of 60")


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
