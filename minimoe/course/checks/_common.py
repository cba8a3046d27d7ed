"""What every exercise check shares: seeded inputs, running a learner's function safely, diagnosing
a wrong answer by comparing it with known wrong variants, and the one-line pass message.

A check raises AssertionError with a message meant for a learner: which exercise, on which input,
and the likely mistake. It never prints a stack trace of its own making.

An answer that is the library's own function (imported, or merely wrapped) is refused with a
message that says so: the check compares the learner's function with the library's, so the
library's would pass without the learner having written anything.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
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
        library: the library functions that compute this exercise's answer (minimoe.ffn for the
            expert FFN): an answer that calls one of them is refused. An answer that IS any
            function of the library is refused whatever this lists.
        weights: whether the inputs hold weight matrices, so that a shape error gets the hint
            about their (out_features, in_features) layout.
        explain: (error, args) -> a hint for a crash of the learner's function on `args`, or ""
            to fall back on the generic hint.
    """

    def __init__(
        self,
        number: str,
        title: str,
        *,
        library: Sequence[Any] = (),
        weights: bool = False,
        explain: Callable[[Exception, tuple], str] | None = None,
    ) -> None:
        self.number = number
        self.title = title
        self.library = tuple(library)
        self.weights = weights
        self.explain = explain

    def fail(self, message: str) -> AssertionError:
        """The AssertionError to raise, prefixed with the exercise's name."""
        return AssertionError(f"Exercise {self.number} ({self.title}): {message}")

    def passed(self, detail: str = "") -> None:
        """Print the pass line, e.g. `✓ Exercise 01.2 (one expert FFN): passed`."""
        extra = f" ({detail})" if detail else ""
        print(f"✓ Exercise {self.number} ({self.title}): passed{extra}")

    def call(self, fn: Callable[..., Any], *args: Any, case: str = "", **kwargs: Any) -> Any:
        """Run the learner's function; turn "not written yet", crashes and the library's own
        function (or a call to it) into clear failures."""
        if not callable(fn):
            raise self.fail(f"expected a function, got {type(fn).__name__}")
        self.refuse_library(fn)
        where = f" on {case}" if case else ""
        try:
            with library_calls(self.library) as called:
                out = fn(*args, **kwargs)
        except NotImplementedError:
            raise self.fail(
                "not solved yet: replace the `raise NotImplementedError(...)` line with your code"
            ) from None
        except Exception as error:  # the learner's bug, reported with its own message
            self.refuse_library_call(called)
            hint = (self.explain(error, args) if self.explain else "") or error_hint(
                error, weights=self.weights
            )
            raise self.fail(
                f"your function raised {type(error).__name__}{where}: {error}{hint}"
            ) from error
        self.refuse_library_call(called)
        return out

    def refuse_library(self, fn: Any, what: str = "function") -> None:
        """Fail when `fn` is, or merely wraps, a function (or object) of the library itself."""
        name = library_name(fn, self.library)
        if name is not None:
            raise self.fail(
                f"this is the library's own {name}, not your answer: write your own {what} in "
                "the answer cell (the check compares yours with the library's)"
            )

    def refuse_library_call(self, called: Sequence[Any]) -> None:
        """Fail when the learner's function ran one of the library functions of this exercise."""
        if called:
            raise self.fail(
                f"your function calls the library's own {describe(called[0])}, which computes "
                "the whole answer: write the computation yourself (the check compares yours "
                "with the library's)"
            )

    def expect_tensor(self, out: Any, shape: Sequence[int], dtype: torch.dtype, case: str) -> None:
        """Fail clearly on None, a non-tensor, a wrong shape or a wrong dtype."""
        if out is None:
            raise self.fail(f"returned None on {case}: did you forget the `return`?")
        if not isinstance(out, torch.Tensor):
            raise self.fail(f"returned a {type(out).__name__} on {case}, expected a torch.Tensor")
        if type(out) is not torch.Tensor:  # a subclass can fake the comparisons
            raise self.fail(
                f"returned a {type(out).__name__} (a torch.Tensor subclass) on {case}, "
                "expected a plain torch.Tensor"
            )
        if tuple(out.shape) != tuple(shape):
            raise self.fail(f"returned shape {tuple(out.shape)} on {case}, expected {tuple(shape)}")
        if out.dtype != dtype:
            raise self.fail(f"returned dtype {out.dtype} on {case}, expected {dtype}")


def error_hint(error: Exception, *, weights: bool = True) -> str:
    """A hint for the errors that common mistakes raise: transposed weights and a missing w3
    where the inputs hold weights, a reduction over the wrong axis where they do not."""
    text = str(error)
    if "cannot be multiplied" in text or "size mismatch" in text or "must match" in text:
        if weights:
            return (
                ". Hint: check each matmul's shapes; the weights are stored (out_features, "
                "in_features), as in nn.Linear, so multiply by the transpose: x_ND @ w1_FD.t()"
            )
        return (
            ". Hint: two tensors' shapes do not fit; print the .shape of each one along the way "
            "(a sum or mean over the wrong dim gives a vector of the wrong length)"
        )
    if "NoneType" in text and weights:
        return ". Hint: w3 is None for activation='gelu'; only SwiGLU uses w3"
    return ""


_PACKAGE = Path(__file__).resolve().parents[2]  # the minimoe package directory


def _unwrap(obj: Any) -> Any:
    """The function behind a partial, a bound method, a decorator (`__wrapped__`) or a module
    (its forward)."""
    for _ in range(20):
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif isinstance(obj, types.MethodType):
            obj = obj.__func__
        elif isinstance(obj, type) and callable(getattr(obj, "forward", None)):
            obj = obj.forward
        elif callable(getattr(obj, "__wrapped__", None)):
            obj = obj.__wrapped__
        else:
            return obj
    return obj


def _code(obj: Any) -> types.CodeType | None:
    code = getattr(_unwrap(obj), "__code__", None)
    return code if isinstance(code, types.CodeType) else None


def describe(obj: Any) -> str:
    """'`ffn` (minimoe.experts.ffn)': how a message names a library function or object."""
    if isinstance(obj, types.CodeType):
        module = next(
            (m for m, f in sys.modules.items() if getattr(f, "__file__", None) == obj.co_filename),
            "minimoe",
        )
        return f"`{obj.co_name}` ({module}.{obj.co_qualname})"
    fn = _unwrap(obj)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"`{name}` ({module}.{name})"


def library_name(obj: Any, library: Sequence[Any] = ()) -> str | None:
    """How to name `obj` in a message when it is, or merely wraps, the library's own function or
    object (one of `library`, or anything from the minimoe package); None when it is not."""
    fn = _unwrap(obj)
    code = _code(fn)
    if any(fn is _unwrap(ref) or (code is not None and code is _code(ref)) for ref in library):
        return describe(fn)
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str):
        module = type(fn).__module__
    from_package = module == "minimoe" or module.startswith("minimoe.")
    if code is not None and Path(code.co_filename).is_absolute():
        from_package = from_package or Path(code.co_filename).resolve().is_relative_to(_PACKAGE)
    return describe(fn) if from_package else None


@contextmanager
def library_calls(library: Sequence[Any]) -> Iterator[list]:
    """Record which of the `library` functions run while the block runs (their code objects).

    It uses `sys.setprofile`, removed afterwards (unless the block set a profiler of its own,
    which is left for others to see); where another profiler is active it records nothing rather
    than replace it.
    """
    called: list = []
    codes = frozenset(c for c in map(_code, library) if c is not None)
    if not codes or sys.getprofile() is not None:
        yield called
        return

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call" and not called and frame.f_code in codes:
            called.append(frame.f_code)

    sys.setprofile(profile)
    try:
        yield called
    finally:
        if sys.getprofile() is profile:
            sys.setprofile(None)


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
