"""What every exercise check shares: seeded inputs, running a learner's function safely, diagnosing
a wrong answer by comparing it with known wrong variants, and the one-line pass message.

A check raises AssertionError with a message meant for a learner: which exercise, on which input,
and the likely mistake. It never prints a stack trace of its own making.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from minimoe.experts import ExpertParams
from minimoe.testing import assert_close, is_close, max_diff

Variant = tuple[str, Callable[..., Any]]


class Exercise:
    """Names one exercise in every message its check prints or raises.

    Args:
        number: e.g. "01.2".
        title: e.g. "one expert FFN".
    """

    def __init__(self, number: str, title: str) -> None:
        self.number = number
        self.title = title

    def fail(self, message: str) -> AssertionError:
        """The AssertionError to raise, prefixed with the exercise's name."""
        return AssertionError(f"Exercise {self.number} ({self.title}): {message}")

    def passed(self, detail: str = "") -> None:
        """Print the pass line, e.g. `✓ Exercise 01.2 (one expert FFN): passed`."""
        extra = f" ({detail})" if detail else ""
        print(f"✓ Exercise {self.number} ({self.title}): passed{extra}")

    def call(self, fn: Callable[..., Any], *args: Any, case: str = "", **kwargs: Any) -> Any:
        """Run the learner's function; turn "not written yet" and crashes into clear failures."""
        if not callable(fn):
            raise self.fail(f"expected a function, got {type(fn).__name__}")
        where = f" on {case}" if case else ""
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            raise self.fail(
                "not solved yet: replace the `raise NotImplementedError(...)` line with your code"
            ) from None
        except Exception as error:  # the learner's bug, reported with its own message
            raise self.fail(
                f"your function raised {type(error).__name__}{where}: {error}{error_hint(error)}"
            ) from error

    def expect_tensor(self, out: Any, shape: Sequence[int], dtype: torch.dtype, case: str) -> None:
        """Fail clearly on None, a non-tensor, a wrong shape or a wrong dtype."""
        if out is None:
            raise self.fail(f"returned None on {case}: did you forget the `return`?")
        if not isinstance(out, torch.Tensor):
            raise self.fail(f"returned a {type(out).__name__} on {case}, expected a torch.Tensor")
        if tuple(out.shape) != tuple(shape):
            raise self.fail(f"returned shape {tuple(out.shape)} on {case}, expected {tuple(shape)}")
        if out.dtype != dtype:
            raise self.fail(f"returned dtype {out.dtype} on {case}, expected {dtype}")


def error_hint(error: Exception) -> str:
    """A hint for the errors that common mistakes raise (transposed weights, a missing w3)."""
    text = str(error)
    if "cannot be multiplied" in text or "size mismatch" in text or "must match" in text:
        return (
            ". Hint: check each matmul's shapes; the weights are stored (out_features, "
            "in_features), as in nn.Linear, so multiply by the transpose: x_ND @ w1_FD.t()"
        )
    if "NoneType" in text:
        return ". Hint: w3 is None for activation='gelu'; only SwiGLU uses w3"
    return ""


def diagnose(
    ex: Exercise,
    out: torch.Tensor,
    expected: torch.Tensor,
    variants: Sequence[Variant],
    args: tuple,
    case: str,
    *,
    atol: float,
    rtol: float,
) -> None:
    """Pass silently when `out` matches `expected`; else raise naming the wrong variant it matches.

    Args:
        variants: (hint, fn) pairs; fn(*args) computes what a known mistake returns.
        args: the inputs `out` was computed from.
    """
    if is_close(out, expected, atol, rtol):
        return
    for hint, wrong in variants:
        try:
            candidate = wrong(*args)
        except Exception:  # a variant that cannot run on this input does not apply here
            continue
        if is_close(out, candidate, atol, rtol) and not is_close(candidate, expected, atol, rtol):
            raise ex.fail(f"wrong values on {case}. Likely mistake: {hint}")
    try:
        assert_close(out, expected, atol=atol, rtol=rtol, name="your output")
    except AssertionError as error:
        raise ex.fail(f"wrong values on {case}: {error}") from None
    abs_err, _ = max_diff(out, expected)
    raise ex.fail(f"wrong values on {case} (max abs diff {abs_err:.3g})")


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator, so a check's inputs never depend on the global RNG state."""
    return torch.Generator().manual_seed(seed)


def make_tokens(T: int, D: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_TD ~ N(0, 1), seeded."""
    return torch.randn(T, D, generator=make_generator(seed), dtype=torch.float64).to(dtype)


def make_experts(
    E: int, D: int, F: int, activation: str, seed: int, dtype: torch.dtype = torch.float32
) -> ExpertParams:
    """E experts' weights, scaled like `minimoe.Experts`, seeded."""
    g = make_generator(seed)

    def w(*shape: int, fan_in: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) / fan_in**0.5).to(dtype)

    w1 = w(E, F, D, fan_in=D)
    w2 = w(E, D, F, fan_in=F)
    w3 = w(E, F, D, fan_in=D) if activation == "swiglu" else None
    return ExpertParams(w1, w2, w3, activation)


def make_routing(
    T: int, E: int, K: int, seed: int, *, drop: float = 0.0, only_expert: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded routing decision: K distinct experts per token, positive gates, some slots dropped.

    Args:
        drop: the probability that a slot is dropped (keep_TK False).
        only_expert: put every token's first choice on this expert (a crowded expert).

    Returns:
        (expert_TK int64, gate_TK float32, keep_TK bool).
    """
    g = make_generator(seed)
    expert_TK = torch.rand(T, E, generator=g).argsort(dim=-1)[:, :K]
    if only_expert is not None and T > 0:
        # swap `only_expert` into slot 0 of every token, keeping the K experts distinct
        has_TK = expert_TK == only_expert
        where_T = torch.where(has_TK.any(-1), has_TK.float().argmax(-1), torch.zeros(T).long())
        expert_TK[torch.arange(T), where_T] = expert_TK[:, 0]
        expert_TK[:, 0] = only_expert
    gate_TK = torch.rand(T, K, generator=g) + 0.1
    gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
    keep_TK = torch.rand(T, K, generator=g) >= drop
    return expert_TK, gate_TK, keep_TK
