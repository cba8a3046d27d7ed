"""The chapter 03 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe import expert_capacity, loop_moe
from minimoe.course.checks.ch03_capacity import CAPACITY_CASES, check_capacity, check_k_major
from minimoe.course.checks.ch03_drops import check_drop_rate, check_dropped_output

# --- 03.1 the capacity formula -------------------------------------------------------------------


def capacity(n_tokens, n_experts, top_k, capacity_factor, min_capacity):
    """The right answer, as the solution notebook writes it."""
    return max(math.ceil(n_tokens * top_k * capacity_factor / n_experts), min_capacity)


def test_capacity_cases_agree_in_every_order_of_the_products() -> None:
    """The check's sizes are free of float-rounding traps: every formula order gives the same C."""
    for T, E, K, cf, m in CAPACITY_CASES:
        values = {
            expert_capacity(T, E, K, "deepspeed", cf, m),
            expert_capacity(T, E, K, "megatron", cf, m),
            capacity(T, E, K, cf, m),
            max(math.ceil(T / E * cf * K), m),
            max(math.ceil(cf * T * K / E), m),
        }
        assert len(values) == 1, (T, E, K, cf, m, values)


def test_capacity_passes(capsys) -> None:
    check_capacity(capacity)
    check_capacity(lambda T, E, K, cf, m: max(-(-T * K * cf // E), m).__int__())  # ceil by //
    assert "✓ Exercise 03.1 (the capacity formula): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda T, E, K, cf, m: max(int(T * K * cf / E), m), ["rounded down", "math.ceil"]),
        (lambda T, E, K, cf, m: max(T * K * cf // E, m), ["rounded down"]),
        (lambda T, E, K, cf, m: max(round(T * K * cf / E), m), ["round()"]),
        (lambda T, E, K, cf, m: max(int(T * K * cf / E) + 1, m), ["int(x) + 1"]),
        (lambda T, E, K, cf, m: max(math.ceil(T * cf / E), m), ["missing ×K"]),
        (lambda T, E, K, cf, m: max(math.ceil(T * cf / E / K), m), ["divided by K"]),
        (lambda T, E, K, cf, m: math.ceil(T * K * cf / E), ["minimum is not applied"]),
        (lambda T, E, K, cf, m: min(math.ceil(T * K * cf / E), m), ["lower bound", "max("]),
        (lambda T, E, K, cf, m: math.ceil(T * K * cf / E) + m, ["added min_capacity"]),
        (lambda T, E, K, cf, m: max(math.ceil(T * K / E) * cf, m), ["after rounding"]),
        (lambda T, E, K, cf, m: max(int(math.ceil(T * K / E) * cf), m), ["after rounding"]),
        (lambda T, E, K, cf, m: max(T * K * cf / E, m), ["whole number"]),
        (lambda T, E, K, cf, m: max(K * int(cf * math.ceil(T / E)), m), ["Tutel"]),
        (lambda T, E, K, cf, m: float(capacity(T, E, K, cf, m)), ["return an int"]),
        (lambda T, E, K, cf, m: None, ["forget the `return`"]),
        (lambda T, E, K, cf, m: capacity(T, E, K, cf, m) + 2, ["expected"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_capacity_wrong(answer, words) -> None:
    fails_with(check_capacity, answer, "Exercise 03.1", *words)


# --- 03.2 k-major dropping -----------------------------------------------------------------------


def k_major_slots(expert_TK, n_experts, capacity, *, order="k_major", start=0, dim=0,
                  inclusive=False, minus_one=True, swap=False, one_hot=True):  # fmt: skip
    """The right answer (cumsum over the k-major one-hot), with switches for a learner's mistake."""
    T, K = expert_TK.shape
    e_N = (expert_TK.t() if order == "k_major" else expert_TK).reshape(-1)
    onehot_NE = F.one_hot(e_N, n_experts) if one_hot else torch.ones(e_N.numel(), 1).long()
    rank_N = (onehot_NE.cumsum(dim) * onehot_NE).sum(1) if one_hot else onehot_NE.cumsum(0)[:, 0]
    position_N = rank_N - 1 + start
    position_TK = position_N.view(K, T).t() if order == "k_major" else position_N.view(T, K)
    keep_TK = position_TK <= capacity if inclusive else position_TK < capacity
    if minus_one:
        position_TK = torch.where(keep_TK, position_TK, -1)
    return (position_TK, keep_TK) if swap else (keep_TK, position_TK)


def k_major_with(**kw):
    return lambda *args: k_major_slots(*args, **kw)


def k_major_by_loop(expert_TK, n_experts, capacity):
    """A plain loop is a right answer too: the check grades values, not the method."""
    T, K = expert_TK.shape
    keep = torch.zeros(T, K, dtype=torch.bool)
    position = torch.full((T, K), -1)
    used = [0] * n_experts
    for k in range(K):
        for t in range(T):
            e = int(expert_TK[t, k])
            if used[e] < capacity:
                keep[t, k], position[t, k] = True, used[e]
            used[e] += 1
    return keep, position


def test_k_major_passes(capsys) -> None:
    check_k_major(k_major_slots)
    check_k_major(k_major_by_loop)
    check_k_major(lambda *a: tuple(t.int() for t in k_major_slots(*a)))  # 0/1 ints for keep
    assert "✓ Exercise 03.2 (k-major dropping with cumulative sums): passed" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "answer, words",
    [
        (k_major_with(order="token"), ["token by token", "expert_TK.t()"]),
        (k_major_with(start=1, inclusive=True), ["1-indexed"]),
        (k_major_with(start=1), ["off by one", "C-1"]),
        (k_major_with(inclusive=True), ["C+1", "not <= C"]),
        (k_major_with(dim=1), ["experts axis"]),
        (k_major_with(one_hot=False), ["every slot whatever its expert"]),
        (k_major_with(minus_one=False), ["must be -1"]),
        (k_major_with(swap=True), ["(position_TK, keep_TK)"]),
        (lambda *a: (k_major_slots(*a)[0], k_major_slots(*a)[1].float()), ["integer tensor"]),
        (lambda *a: k_major_slots(*a)[0], ["return 2 tensors"]),
        (lambda *a: (k_major_slots(*a)[0], k_major_slots(*a)[1].t()), ["shape"]),
        (lambda e, E, C: k_major_slots(e.flip(0), E, C), ["slots differ", "expected keep"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_k_major_wrong(answer, words) -> None:
    fails_with(check_k_major, answer, "Exercise 03.2", *words)


# --- 03.3 the drop rate --------------------------------------------------------------------------


def drop_rate(keep_TK):
    """The right answer."""
    return (~keep_TK).sum().item() / max(keep_TK.numel(), 1)


def test_drop_rate_passes(capsys) -> None:
    check_drop_rate(drop_rate)
    check_drop_rate(lambda keep: 1 - keep.float().mean() if keep.numel() else torch.tensor(0.0))
    assert "✓ Exercise 03.3 (the drop rate): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda keep: (~keep).sum().item() / max(keep.shape[0], 1), ["divided by T", "T*K"]),
        (lambda keep: (~keep).any(1).float().mean().nan_to_num().item(), ["lost a slot"]),
        (lambda keep: (~keep).all(1).float().mean().nan_to_num().item(), ["lost every slot"]),
        (lambda keep: keep.float().mean().nan_to_num().item(), ["kept fraction"]),
        (lambda keep: int((~keep).sum()), ["number of dropped slots"]),
        (lambda keep: (~keep).float().mean().item(), ["nan", "T=0"]),
        (lambda keep: None, ["forget the `return`"]),
        (lambda keep: [0.25], ["as a number"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_drop_rate_wrong(answer, words) -> None:
    fails_with(check_drop_rate, answer, "Exercise 03.3", *words)


# --- 03.4 the output of a dropped token ----------------------------------------------------------


def moe_block(x_TD, expert_TK, gate_TK, keep_TK, params, renormalize, *, renorm=None,
              mask=True, zero_lost=False, identity=False, gate_x=False, residual=True,
              unsafe_divide=False):  # fmt: skip
    """The right answer (gates masked, renormalised when asked, then loop_moe and the residual),
    with switches for a learner's mistake."""
    renormalize = renormalize if renorm is None else renorm
    kept_TK = gate_TK * keep_TK if mask else gate_TK
    if renormalize:
        kept_sum = kept_TK.sum(-1, keepdim=True)
        kept_sum = kept_sum if unsafe_divide else kept_sum.clamp_min(1e-9)
        kept_TK = kept_TK / kept_sum * gate_TK.sum(-1, keepdim=True)
    # with unsafe_divide the dropped slots are masked by their gates only (0 * FFN, or nan * FFN)
    keep = keep_TK if mask and not unsafe_divide else None
    y_TD = loop_moe(x_TD, expert_TK, kept_TK, params, keep)
    lost_T1 = ~keep_TK.any(1, keepdim=True)
    if identity:
        y_TD = torch.where(lost_T1, x_TD, y_TD)
    if gate_x:
        y_TD = y_TD + (gate_TK * ~keep_TK).sum(1, keepdim=True) * x_TD
    out_TD = x_TD + y_TD if residual else y_TD
    if zero_lost:
        out_TD = torch.where(lost_T1, torch.zeros_like(out_TD), out_TD)
    return y_TD, out_TD


def block_with(**kw):
    return lambda *args: moe_block(*args, **kw)


def test_dropped_output_passes(capsys) -> None:
    check_dropped_output(moe_block)
    assert "✓ Exercise 03.4 (the output of a dropped token): passed" in capsys.readouterr().out


def test_dropped_output_refuses_the_library_renormalisation() -> None:
    """The renormalisation is the exercise: the library's own renormalize_survivors is refused;
    the library's experts step (as the lesson's loop_moe) is allowed."""
    from minimoe import reference_moe, renormalize_survivors

    def library(x, expert, gate, keep, params, renormalize):
        gate = renormalize_survivors(gate, keep) if renormalize else gate
        y = reference_moe(x, expert, gate, params, keep)
        return y, x + y

    fails_with(
        check_dropped_output, library, "Exercise 03.4", "library's own `renormalize_survivors`"
    )


@pytest.mark.parametrize(
    "answer, words",
    [
        (block_with(zero_lost=True), ["set to 0", "out = x + 0 = x"]),
        (block_with(identity=True), ["got y = x", "residual"]),
        (block_with(gate_x=True), ["gate * x", "#37123"]),
        (block_with(mask=False), ["ignored keep_TK"]),
        (block_with(renorm=False), ["renormalize=True", "not rescaled"]),
        (block_with(renorm=True), ["renormalize=False"]),
        (block_with(residual=False), ["x + y"]),
        (block_with(unsafe_divide=True), ["NaN", "0 by 0"]),
        (lambda *a: moe_block(*a)[0], ["return 2 tensors"]),
        (lambda *a: tuple(t.double() for t in moe_block(*a)), ["dtype"]),
        (lambda *a: tuple(1.01 * t for t in moe_block(*a)), ["max abs diff"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_dropped_output_wrong(answer, words) -> None:
    fails_with(check_dropped_output, answer, "Exercise 03.4", *words)


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/03 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch03_capacity as ch03
    from minimoe.course.checks import ch03_drops

    assert_check_cells_match(
        ["03_capacity.ipynb"],
        (ch03.CAPACITY, ch03.K_MAJOR, ch03_drops.DROP_RATE, ch03_drops.DROPPED_OUTPUT),
        "from minimoe.course.checks.ch03_",
    )


def test_capacity_and_k_major_refuse_the_library() -> None:
    from minimoe import assign_slots

    fails_with(check_capacity, expert_capacity, "Exercise 03.1", "library's own `expert_capacity`")
    fails_with(
        check_capacity,
        lambda T, E, K, cf, m: expert_capacity(T, E, K, "deepspeed", cf, m),
        "calls the library's own `expert_capacity`",
    )

    def k_major(expert_TK, n_experts, capacity):
        return assign_slots(expert_TK, torch.ones(expert_TK.shape), n_experts, capacity, "k_major")

    fails_with(check_k_major, k_major, "Exercise 03.2", "calls the library's own `assign_slots`")
