"""Checks for chapter 03 (capacity and overflow): the capacity formula and k-major dropping (the
drop rate and the output of a dropped token are checked in `ch03_drops`).

03.1 compares the learner's C with `minimoe.expert_capacity` (the DeepSpeed formula,
max(ceil(T*K*cf/E), min_capacity)) on sizes where the rounding matters; 03.2 compares keep_TK and
position_TK with `minimoe.assign_slots(..., "k_major")`. A wrong answer is matched against the
mistakes learners make (floor instead of ceil, int(x) + 1, the missing ×K, the minimum left out or
applied with min(), cf applied after the ceil; token-major order, 1-indexed positions, a cumsum
along the wrong axis, an inclusive capacity test) and the message names the mistake.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from minimoe.capacity import assign_slots, expert_capacity
from minimoe.course.checks._common import Exercise, diagnose, make_routing

CAPACITY = Exercise("03.1", "the capacity formula", library=(expert_capacity,))
K_MAJOR = Exercise("03.2", "k-major dropping with cumulative sums", library=(assign_slots,))


def diagnose_or_say(ex: Exercise, say: Callable[[], str], *args: Any, **kwargs: Any) -> None:
    """`diagnose`, but when no known mistake matches, fail with `say()` (a message in the
    exercise's own words) instead of the generic tensor comparison."""
    try:
        diagnose(ex, *args, **kwargs)
    except AssertionError as error:
        if "Likely mistake" in str(error):
            raise
        raise ex.fail(say()) from None


# --- 03.1 the capacity formula ---------------------------------------------------------------

# (T, E, K, cf, min_capacity); every cf is exact in binary, so the order of the products does not
# change the result (tests/course/test_checks_ch03.py checks that the DeepSpeed and Megatron orders agree)
CAPACITY_CASES = [
    (11, 4, 1, 1.0, 0),  # 2.75: floor gives 2
    (12, 4, 2, 1.25, 0),  # 7.5: without the K, 3.75
    (16, 8, 2, 1.0, 0),  # exactly 4: int(x) + 1 gives 5
    (9, 8, 1, 1.5, 0),  # 1.6875: ceil(T*K/E) * cf gives 3
    (64, 8, 2, 1.25, 4),  # 20, above the minimum
    (8, 8, 2, 1.0, 4),  # 2, below the minimum: 4
    (1, 8, 2, 1.0, 0),  # T = 1
    (6, 3, 3, 1.0, 0),  # K = E: C = T
    (0, 4, 2, 1.0, 8),  # T = 0: only the minimum
    (4096, 64, 8, 1.25, 8),  # a fine-grained layer: 640
]


def _capacity_variants() -> list[tuple[str, Callable]]:
    def lower(fn: Callable) -> Callable:  # the formula with the minimum applied
        return lambda T, E, K, cf, m: max(fn(T, E, K, cf), m)

    cf_after = (
        "applied cf after rounding, ceil(T*K/E) * cf: multiply by cf first, then round up once"
    )
    return [
        (cf_after, lower(lambda T, E, K, cf: int(math.ceil(T * K / E) * cf))),
        (cf_after, lower(lambda T, E, K, cf: math.ceil(math.ceil(T * K / E) * cf))),
        (cf_after, lower(lambda T, E, K, cf: math.ceil(T * K / E) * cf)),
        (
            "C is rounded down (int(), math.floor, // or round()): off by one whenever "
            "T*K*cf/E is not a whole number. Round up with math.ceil, so that E*C >= T*K*cf",
            lower(lambda T, E, K, cf: math.floor(T * K * cf / E)),
        ),
        (
            "int(x) + 1 is not a ceiling: it is one slot too many when T*K*cf/E is a whole "
            "number. Use math.ceil",
            lower(lambda T, E, K, cf: int(T * K * cf / E) + 1),
        ),
        (
            "missing ×K: every token sends K slots, so T*K*cf/E slots per expert; without the K "
            "an expert has room for only 1/K of its share (the Switch formula is for K = 1)",
            lower(lambda T, E, K, cf: math.ceil(T * cf / E)),
        ),
        (
            "divided by K; the T*K slots are shared by the E experts: multiply by K",
            lower(lambda T, E, K, cf: math.ceil(T * cf / (E * K))),
        ),
        (
            "that is Tutel's formula, K * int(cf * ceil(T/E)), which rounds down before the ×K; "
            "this exercise asks for DeepSpeed's max(ceil(T*K*cf/E), min_capacity)",
            lower(lambda T, E, K, cf: K * int(cf * math.ceil(T / E))),
        ),
        (
            "the minimum is not applied: C = max(ceil(T*K*cf/E), min_capacity)",
            lambda T, E, K, cf, m: math.ceil(T * K * cf / E),
        ),
        (
            "added min_capacity; it is a lower bound, not an offset: max(C, min_capacity)",
            lambda T, E, K, cf, m: math.ceil(T * K * cf / E) + m,
        ),
        (
            "used min(C, min_capacity); min_capacity is a lower bound: max(C, min_capacity)",
            lambda T, E, K, cf, m: min(math.ceil(T * K * cf / E), m),
        ),
        (
            "C is a number of slots, a whole number: round T*K*cf/E up with math.ceil",
            lower(lambda T, E, K, cf: T * K * cf / E),
        ),
    ]


def _as_number(out: Any) -> float | None:
    if isinstance(out, bool):
        return None
    if isinstance(out, numbers.Real):
        return float(out)
    if isinstance(out, torch.Tensor) and out.numel() == 1 and not out.dtype == torch.bool:
        return float(out)
    return None


def check_capacity(capacity_fn: Callable) -> None:
    """Check `capacity(n_tokens, n_experts, top_k, capacity_factor, min_capacity) -> int` against
    `minimoe.expert_capacity(..., "deepspeed", ...)`."""
    variants = [(hint, lambda *a, fn=fn: torch.tensor(float(fn(*a)))) for hint, fn in
                _capacity_variants()]  # fmt: skip
    not_int = None
    for T, E, K, cf, m in CAPACITY_CASES:
        case = f"T={T}, E={E}, K={K}, cf={cf}, min_capacity={m}"
        out = CAPACITY.call(capacity_fn, T, E, K, cf, m, case=case)
        value = _as_number(out)
        if value is None:
            got = "None (did you forget the `return`?)" if out is None else type(out).__name__
            raise CAPACITY.fail(f"returned {got} on {case}; return C as an int")
        expected = expert_capacity(T, E, K, "deepspeed", cf, m)
        said = f"wrong value on {case}: you returned {out!r}, expected {expected}"
        diagnose_or_say(
            CAPACITY,
            lambda said=said: said,
            torch.tensor(value),
            torch.tensor(float(expected)),
            variants,
            (T, E, K, cf, m),
            case + f" (you returned {out!r}, expected {expected})",
            atol=0,
            rtol=0,
        )
        if not isinstance(out, numbers.Integral) and not_int is None:
            not_int = f"returned {out!r} ({type(out).__name__}) on {case}"
    if not_int:  # reported after the values, so that a wrong value is named first
        raise CAPACITY.fail(
            f"{not_int}: the value is right, but C is a buffer size, so return an int "
            "(math.ceil returns one; int(...) converts)"
        )
    CAPACITY.passed(f"{len(CAPACITY_CASES)} cases, incl. T=0, K=E, the minimum, exact quotients")


# --- 03.2 k-major dropping with cumulative sums ----------------------------------------------


def _k_major_by_cumsum(
    expert_TK: torch.Tensor, E: int, C: int, *, axis: str = "slots", start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank each slot in its expert with a cumsum over the k-major slots; `start` = 1 is the
    1-indexed count, axis="experts" the cumsum along the wrong axis. Returns (rank_TK, keep)."""
    T, K = expert_TK.shape
    onehot_NE = F.one_hot(expert_TK.t().reshape(-1), E)  # k-major: slot k*T + t
    count_NE = onehot_NE.cumsum(0 if axis == "slots" else 1)
    rank_N = (count_NE * onehot_NE).sum(1) - 1 + start
    rank_TK = rank_N.view(K, T).t()
    return rank_TK, rank_TK < C


def _pack(keep_TK: torch.Tensor, position_TK: torch.Tensor) -> torch.Tensor:
    """(keep_TK, position_TK) as one float64 tensor (T, 2K), so one comparison covers both."""
    return torch.cat([keep_TK.double(), position_TK.double()], dim=-1)


def _masked(rank_TK: torch.Tensor, keep_TK: torch.Tensor) -> torch.Tensor:
    return _pack(keep_TK, torch.where(keep_TK, rank_TK, -1))


def _k_major_variants() -> list[tuple[str, Callable]]:
    def token_major(e, E, C):
        return _pack(*assign_slots(e, torch.zeros(e.shape), E, C, "position"))

    def one_indexed(e, E, C):
        rank, _ = _k_major_by_cumsum(e, E, C, start=1)
        return _masked(rank, rank <= C)

    def one_indexed_strict(e, E, C):
        rank, _ = _k_major_by_cumsum(e, E, C, start=1)
        return _masked(rank, rank < C)

    def inclusive(e, E, C):
        rank, _ = _k_major_by_cumsum(e, E, C)
        return _masked(rank, rank <= C)

    def along_experts(e, E, C):
        return _masked(*_k_major_by_cumsum(e, E, C, axis="experts"))

    def all_slots_together(e, E, C):
        T, K = e.shape
        rank = torch.arange(T * K).view(K, T).t()
        return _masked(rank, rank < C)

    def dropped_not_minus_one(e, E, C):
        rank, keep = _k_major_by_cumsum(e, E, C)
        return _pack(keep, rank)

    return [
        (
            "ranked token by token (all K choices of token 0, then of token 1, ...); k-major "
            "ranks every token's first choice before any second choice: take the cumsum over "
            "the slots of expert_TK.t() (k-major order), then transpose back",
            token_major,
        ),
        (
            "positions are 1-indexed: a cumsum counts 1, 2, 3, ..., so subtract 1 (positions "
            "run 0 .. C-1)",
            one_indexed,
        ),
        (
            "off by one: a cumsum counts from 1, so `cumsum < C` keeps only C-1 slots per "
            "expert; subtract 1 to get 0-indexed positions and keep position < C",
            one_indexed_strict,
        ),
        (
            "kept C+1 slots per expert: with 0-indexed positions a slot fits when position < C, "
            "not <= C",
            inclusive,
        ),
        (
            "the cumsum ran along the experts axis (one count per token); it must run along the "
            "slots axis (dim 0 of the (K*T, E) one-hot), one running count per expert",
            along_experts,
        ),
        (
            "counted every slot whatever its expert; keep one running count per expert (one "
            "one-hot column per expert)",
            all_slots_together,
        ),
        (
            "a dropped slot's position must be -1 (torch.where(keep_TK, position, -1))",
            dropped_not_minus_one,
        ),
    ]


# (T, E, K, C, only_expert)
K_MAJOR_CASES = [
    (8, 4, 2, 3, None),
    (10, 4, 2, 4, None),
    (6, 4, 1, 2, 1),  # every token on expert 1: most of them dropped
    (3, 6, 1, 2, None),  # experts without a token
    (4, 3, 3, 3, None),  # K = E
    (5, 4, 2, 10, None),  # C > T: nothing dropped
    (1, 4, 2, 1, None),
    (0, 4, 2, 2, None),
]


def _tensor_pair(ex: Exercise, out: Any, T: int, K: int, case: str) -> tuple:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = type(out).__name__ if not isinstance(out, (tuple, list)) else f"{len(out)} values"
        raise ex.fail(f"return 2 tensors (keep_TK, position_TK) on {case}; got {got}")
    for name, item in zip(("keep_TK", "position_TK"), out):
        if not isinstance(item, torch.Tensor):
            raise ex.fail(f"{name} on {case} is a {type(item).__name__}, expected a torch.Tensor")
        if tuple(item.shape) != (T, K):
            raise ex.fail(f"{name} has shape {tuple(item.shape)} on {case}, expected {(T, K)}")
    keep, position = out
    if keep.numel() and not bool(((keep == 0) | (keep == 1)).all()):
        raise ex.fail(
            f"keep_TK holds values other than True/False on {case}"
            + (
                "; did you return (position_TK, keep_TK)?"
                if not position.is_floating_point()
                else ""
            )
        )
    if position.is_floating_point() or position.dtype == torch.bool:
        raise ex.fail(f"position_TK must be an integer tensor on {case}, got {position.dtype}")
    return keep.bool(), position


def check_k_major(k_major_fn: Callable) -> None:
    """Check `k_major_slots(expert_TK, n_experts, capacity) -> (keep_TK, position_TK)` against
    `minimoe.assign_slots(expert_TK, gate_TK, n_experts, capacity, "k_major")`."""
    variants = _k_major_variants()
    for i, (T, E, K, C, only) in enumerate(K_MAJOR_CASES):
        expert_TK, gate_TK, _ = make_routing(T, E, K, seed=300 + i, only_expert=only)
        keep_TK, position_TK = assign_slots(expert_TK, gate_TK, E, C, "k_major")
        case = f"T={T}, E={E}, K={K}, C={C}, {int((~keep_TK).sum())} slots to drop"
        out = K_MAJOR.call(k_major_fn, expert_TK.clone(), E, C, case=case)
        keep, position = _tensor_pair(K_MAJOR, out, T, K, case)
        diagnose_or_say(
            K_MAJOR,
            partial(_first_difference, keep, position, keep_TK, position_TK, case),
            _pack(keep, position),
            _pack(keep_TK, position_TK),
            variants,
            (expert_TK, E, C),
            case,
            atol=0,
            rtol=0,
        )
    K_MAJOR.passed(f"{len(K_MAJOR_CASES)} cases, incl. one crowded expert, C > T, T=0, K=E")


def _first_difference(keep, position, keep_TK, position_TK, case: str) -> str:
    """Where a wrong answer first differs, in words."""
    bad_TK = (keep != keep_TK) | (position.long() != position_TK)
    t, k = (int(i) for i in torch.nonzero(bad_TK)[0])
    return (
        f"wrong values on {case}: {int(bad_TK.sum())} slots differ; first token {t}, choice "
        f"k={k}: you gave keep={bool(keep[t, k])}, position={int(position[t, k])}; expected "
        f"keep={bool(keep_TK[t, k])}, position={int(position_TK[t, k])}"
    )
