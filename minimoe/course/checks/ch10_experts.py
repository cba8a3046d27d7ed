"""Check for chapter 10, exercise 10.1: the expected number of experts a decode batch touches.

A decode step of B sequences sends each token to K of E experts. If every token chose its K
experts independently and uniformly, one expert would be missed by one token with probability
1 − K/E, by all B tokens with probability (1 − K/E)^B, so the expected number touched is
E·(1 − (1 − K/E)^B), `minimoe.serving.expected_experts_touched`. A wrong answer is matched against
the mistakes learners make (the probability for one expert without the factor E, B·K capped at E,
B·K uncapped, the idle experts instead of the touched ones, the B·K picks drawn with replacement,
K forgotten) and the message names the mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise
from minimoe.course.checks.ch03_capacity import diagnose_or_say
from minimoe.serving import expected_experts_touched

EXPERTS_TOUCHED = Exercise(
    "10.1", "experts touched by a decode batch", library=(expected_experts_touched,)
)

# (E, K, B): Mixtral 8/2, Qwen3-30B-A3B 128/8, DeepSeek-V3 256/8, OLMoE 64/8, and the edges
EXPERTS_TOUCHED_CASES = [
    (8, 2, 6),  # Mixtral, a batch of 6: 6.6 of 8 (B·K = 12 > E)
    (8, 2, 3),  # Mixtral, a batch of 3: 4.6 of 8
    (8, 2, 1),  # one token touches exactly K
    (128, 8, 16),  # Qwen3-30B-A3B
    (256, 8, 64),  # DeepSeek-V3: 222 of 256
    (64, 8, 3),  # OLMoE
    (8, 8, 3),  # K = E: every expert, whatever B
    (8, 2, 0),  # an empty batch touches nothing
    (16, 1, 40),  # top-1, B > E
]


def _variants() -> list[tuple[str, Callable[..., float]]]:
    def miss(E: int, K: int, B: int) -> float:
        return (1 - K / E) ** B

    return [
        (
            "returned 1 − (1 − K/E)^B, the probability that one given expert is touched; "
            "multiply by the E experts to get the expected number touched",
            lambda E, K, B: 1 - miss(E, K, B),
        ),
        (
            "min(B·K, E) assumes no two tokens ever share an expert; tokens collide, so fewer "
            "experts are touched: count, for each expert, the chance that some token picks it",
            lambda E, K, B: float(min(B * K, E)),
        ),
        (
            "B·K counts every pick as a new expert, even beyond E; an expert picked by two tokens "
            "is loaded once",
            lambda E, K, B: float(B * K),
        ),
        (
            "E·(1 − K/E)^B is the expected number of experts NOT touched (missed by every token); "
            "the touched ones are E minus that",
            lambda E, K, B: E * miss(E, K, B),
        ),
        (
            "E·(1 − (1 − 1/E)^(B·K)) treats the B·K picks as independent draws with replacement; "
            "a token's K experts are distinct, so one token misses an expert with probability "
            "1 − K/E",
            lambda E, K, B: E * (1 - (1 - 1 / E) ** (B * K)),
        ),
        (
            "E·(1 − (1 − 1/E)^B) forgets K: each token picks K experts, so it misses a given "
            "expert with probability 1 − K/E",
            lambda E, K, B: E * (1 - (1 - 1 / E) ** B),
        ),
        (
            "E·(K/E)^B is the expected number of experts picked by EVERY token; an expert counts "
            "as soon as one token picks it",
            lambda E, K, B: E * (K / E) ** B,
        ),
        ("rounded the expectation to a whole number: return the float", None),
    ]


def _as_number(out: Any) -> float | None:
    if isinstance(out, bool) or out is None:
        return None
    if isinstance(out, torch.Tensor):
        return float(out) if out.numel() == 1 and not out.dtype.is_complex else None
    try:
        return float(out)
    except (TypeError, ValueError):
        return None


def check_expected_experts_touched(fn: Callable) -> None:
    """Check `expected_experts_touched(n_experts, top_k, batch) -> float` against
    `minimoe.serving.expected_experts_touched` on real models' E and K and the edge cases."""
    variants = [(hint, v) for hint, v in _variants() if v is not None]
    rounded = _variants()[-1][0]
    for E, K, B in EXPERTS_TOUCHED_CASES:
        case = f"E={E}, K={K}, B={B}"
        out = EXPERTS_TOUCHED.call(fn, E, K, B, case=case)
        value = _as_number(out)
        if value is None:
            got = "None (did you forget the `return`?)" if out is None else type(out).__name__
            raise EXPERTS_TOUCHED.fail(f"returned {got} on {case}; return a number (a float)")
        expected = float(expected_experts_touched(E, K, B))
        if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9) and (
            value == round(expected) or value in (math.floor(expected), math.ceil(expected))
        ):
            raise EXPERTS_TOUCHED.fail(
                f"wrong value on {case}: you returned {value:g}, expected {expected:.4f}. "
                f"Likely mistake: {rounded}"
            )
        said = f"wrong value on {case}: you returned {value:.6g}, expected {expected:.6g}"
        diagnose_or_say(
            EXPERTS_TOUCHED,
            lambda said=said: said,
            torch.tensor(value, dtype=torch.float64),
            torch.tensor(expected, dtype=torch.float64),
            [(hint, lambda E, K, B, v=v: torch.tensor(v(E, K, B), dtype=torch.float64))
             for hint, v in variants],
            (E, K, B),
            f"{case} (you returned {value:.6g}, expected {expected:.6g})",
            atol=1e-9,
            rtol=1e-9,
        )  # fmt: skip
    EXPERTS_TOUCHED.passed(f"{len(EXPERTS_TOUCHED_CASES)} cases, incl. B=0, B=1, K=E")
