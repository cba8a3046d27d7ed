"""Checks for chapter 05 (vectorised MoE): dispatch/combine tensors and the sort by expert (the
padded batched matmul's check is in `ch05_padded`).

Each check compares the learner's function with the library (`minimoe.dispatch_combine_tensors`,
`minimoe.sort_slots`, the float64 oracle `minimoe.reference_moe`) on seeded inputs: drops, an empty
expert, every token on one expert, K = E, T = 1, T = 0, D = 100. A wrong answer is matched
against known wrong variants (position off by one, a dropped slot written into the last buffer
place, combine without the gate, an unstable sort, the permutation not inverted, exclusive
offsets, padding rows read back as if they were tokens, ...) and the message names the mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from minimoe.capacity import assign_slots
from minimoe.course.checks._common import Exercise, diagnose, make_routing
from minimoe.einsum import dispatch_combine_tensors
from minimoe.sorted import sort_slots

DISPATCH = Exercise("05.1", "dispatch and combine tensors", library=(dispatch_combine_tensors,))
SORT = Exercise("05.2", "sort by expert and invert", library=(sort_slots,))

ATOL, RTOL = 1e-5, 1e-4  # float32 answers against a float64 reference

_POSITION_HINTS = (  # (text in the learner's error, what it most likely means)
    ("must be non-negative", "a dropped slot has position -1: use only the kept slots (keep_TK)"),
    (
        "smaller than num_classes",
        "a position is >= C: positions run 0 .. C-1 (0-indexed, not 1 .. C)",
    ),
    (
        "out of bounds",
        "an index is out of range: positions run 0 .. C-1 and a dropped slot's is -1 (mask it)",
    ),
)


def _call(ex: Exercise, fn: Callable, *args: Any, case: str, hints: tuple = ()) -> Any:
    """`ex.call` on clones of the inputs, with a hint added for the typical crashes in `hints`."""
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        return ex.call(fn, *args, case=case)
    except AssertionError as error:
        text = str(error.__cause__ or "")
        for needle, hint in hints:
            if needle in text:
                raise AssertionError(f"{str(error).rstrip('.')}. Likely mistake: {hint}") from None
        raise


def _expect_tuple(ex: Exercise, out: Any, n: int, names: str, case: str) -> tuple:
    if not isinstance(out, (tuple, list)) or len(out) != n:
        got = type(out).__name__ if not isinstance(out, (tuple, list)) else f"{len(out)} values"
        raise ex.fail(f"return {n} tensors ({names}) on {case}; got {got}")
    for item in out:
        if not isinstance(item, torch.Tensor):
            raise ex.fail(f"return torch.Tensors ({names}) on {case}; got {type(item).__name__}")
    return tuple(out)


# --- 05.1 dispatch and combine tensors -------------------------------------------------------


def _dc_variants() -> list[tuple[str, Callable]]:
    def library(expert, gate, pos, keep, E, C, *, shift=0, mask=True, own_positions=False):
        if own_positions:
            return dispatch_combine_tensors(expert, gate, keep, E, C)
        pos = pos + shift
        if not mask:  # dropped slots (position -1) index the last place, as tensor[..., -1] does
            keep, pos = torch.ones_like(keep), torch.where(pos < 0, pos + C, pos)
        keep = keep & (pos < C) & (pos >= 0)
        return dispatch_combine_tensors(expert, gate, keep, E, C, position_TK=pos)

    def variant(part: int, transform: Callable = lambda d, c: (d, c), **kw) -> Callable:
        return lambda *a: transform(*library(*a, **kw))[part]

    hints = [
        ("positions are 0-indexed: a slot at position p goes to index c = p, not p + 1", {}, 1),
        (
            "dropped slots were not masked: their position is -1, and tensor[t, e, -1] = ... "
            "writes into the last place c = C-1. Keep only the slots with keep_TK True",
            {"mask": False},
            0,
        ),
        (
            "you ranked the slots yourself in token order; use position_TK as given (the drop "
            "policy decides the positions, e.g. first choices before second choices)",
            {"own_positions": True},
            0,
        ),
    ]
    variants: list[tuple[str, Callable]] = []
    for part in (0, 1):
        name = ("dispatch", "combine")[part]
        for hint, kw, shift in hints:
            variants.append((f"{hint} (seen in {name}_TEC)", variant(part, shift=shift, **kw)))
    variants.append(
        (
            "forgot the gate in combine_TEC: it holds gate_TK[t, k] where dispatch is True",
            variant(1, lambda d, c: (d, d.to(c.dtype))),
        )
    )
    return variants


def check_dispatch_combine(dispatch_combine_fn: Callable) -> None:
    """Check `dispatch_combine(expert_TK, gate_TK, position_TK, keep_TK, n_experts, capacity)
    -> (dispatch_TEC bool, combine_TEC)` against `minimoe.dispatch_combine_tensors`."""
    # (T, E, K, capacity, drop policy, only_expert)
    cases = [
        (8, 4, 2, 3, "position", None),
        (8, 4, 2, 3, "k_major", None),  # positions that are not the token order
        (6, 4, 2, 6, "position", None),  # spare room: no drops, the buffers are not full
        (6, 4, 1, 2, "position", 1),  # every token on expert 1: most of them dropped
        (3, 6, 1, 2, "probs", None),  # experts without a token
        (4, 3, 3, 3, "k_major", None),  # K = E
        (1, 4, 2, 2, "position", None),
        (0, 4, 2, 2, "position", None),
    ]
    variants = _dc_variants()
    for i, (T, E, K, C, policy, only) in enumerate(cases):
        expert_TK, gate_TK, _ = make_routing(T, E, K, seed=60 + i, only_expert=only)
        keep_TK, position_TK = assign_slots(expert_TK, gate_TK, E, C, policy)
        args = (expert_TK, gate_TK, position_TK, keep_TK, E, C)
        case = f"T={T}, E={E}, K={K}, C={C}, {int((~keep_TK).sum())} dropped slots ({policy})"
        out = _call(DISPATCH, dispatch_combine_fn, *args, case=case, hints=_POSITION_HINTS)
        dispatch, combine = _expect_tuple(DISPATCH, out, 2, "dispatch_TEC, combine_TEC", case)
        exp_dispatch, exp_combine = dispatch_combine_tensors(
            expert_TK, gate_TK, keep_TK, E, C, position_TK=position_TK
        )
        for name, got in (("dispatch_TEC", dispatch), ("combine_TEC", combine)):
            if tuple(got.shape) != (T, E, C):
                axes = "(T, E, C)"
                hint = f"; the axes are {axes}" if tuple(got.shape) == (T, C, E) else ""
                if got.dim() == 3 and got.shape[:2] == (T, E) and got.shape[2] != C:
                    hint = "; the last axis has length C = capacity, even for buffers not full"
                raise DISPATCH.fail(
                    f"{name} has shape {tuple(got.shape)} on {case}, expected {(T, E, C)}{hint}"
                )
        if dispatch.numel() and not bool(((dispatch == 0) | (dispatch == 1)).all()):
            swapped = _same(dispatch, exp_combine)
            raise DISPATCH.fail(
                f"dispatch_TEC holds values other than 0 and 1 on {case}: "
                + (
                    "you returned (combine, dispatch); return (dispatch, combine)"
                    if swapped
                    else "dispatch is 1 (True) where a kept slot sits, and 0 elsewhere"
                )
            )
        diagnose(
            DISPATCH,
            dispatch.bool().double(),
            exp_dispatch.double(),
            variants[:3],
            args,
            case,
            atol=0,
            rtol=0,
        )
        if not combine.is_floating_point():
            raise DISPATCH.fail(
                f"combine_TEC must hold the gate weights (float), got {combine.dtype}"
            )
        diagnose(DISPATCH, combine, exp_combine, variants[3:], args, case, atol=ATOL, rtol=RTOL)
    _check_combine_gradient(dispatch_combine_fn)
    DISPATCH.passed(f"{len(cases)} cases, incl. drops, k-major positions, T=0, K=E")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same values (float64 comparison, shapes equal)."""
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=1e-6))


def _check_combine_gradient(fn: Callable) -> None:
    """combine must stay differentiable in gate_TK: the router learns through it."""
    expert_TK, gate_TK, _ = make_routing(5, 3, 2, seed=70)
    keep_TK, position_TK = assign_slots(expert_TK, gate_TK, 3, 3, "position")
    gate = gate_TK.clone().requires_grad_()
    case = "a gate_TK with requires_grad=True"
    _, combine = _expect_tuple(
        DISPATCH,
        DISPATCH.call(fn, expert_TK, gate, position_TK, keep_TK, 3, 3, case=case),
        2,
        "dispatch_TEC, combine_TEC",
        case,
    )
    if not combine.requires_grad:
        raise DISPATCH.fail(
            "combine_TEC is cut off from gate_TK's gradient (the router could not learn): avoid "
            ".item(), float(...), .detach() and torch.no_grad() on the gates"
        )
    (grad,) = torch.autograd.grad(combine.sum(), gate)
    if not _same(grad, keep_TK.to(grad.dtype)):
        raise DISPATCH.fail("d(combine.sum())/d(gate) should be 1 for each kept slot, 0 if dropped")


# --- 05.2 sort by expert ---------------------------------------------------------------------


def _int_vector(ex: Exercise, name: str, got: torch.Tensor, n: int, case: str, hint: str = ""):
    if got.is_floating_point() or got.dtype == torch.bool:
        raise ex.fail(f"{name} must be an integer tensor on {case}, got {got.dtype}")
    if tuple(got.shape) != (n,):
        raise ex.fail(f"{name} has shape {tuple(got.shape)} on {case}, expected ({n},){hint}")


def check_sort_by_expert(sort_fn: Callable) -> None:
    """Check `sort_by_expert(expert_TK, keep_TK, n_experts) -> (order_M, counts_E, offsets_E,
    inverse_N)` against `minimoe.sort_slots`."""
    # (T, E, K, drop, only_expert)
    cases = [
        (8, 4, 2, 0.0, None),
        (40, 4, 2, 0.0, None),  # long enough that an unstable sort reorders ties
        (10, 4, 2, 0.3, None),
        (6, 4, 1, 0.0, 2),  # every token on expert 2
        (3, 6, 1, 0.0, None),  # experts without a token (the last ones included)
        (4, 3, 3, 0.25, None),  # K = E
        (1, 4, 2, 0.0, None),
        (0, 4, 2, 0.0, None),
    ]
    for i, (T, E, K, drop, only) in enumerate(cases):
        expert_TK, _, keep_TK = make_routing(T, E, K, seed=80 + i, drop=drop, only_expert=only)
        case = f"T={T}, E={E}, K={K}, {int((~keep_TK).sum())} dropped slots"
        out = _call(SORT, sort_fn, expert_TK, keep_TK, E, case=case)
        names = "order_M, counts_E, offsets_E, inverse_N"
        order, counts, offsets, inverse = _expect_tuple(SORT, out, 4, names, case)
        e_order, e_counts, e_offsets, e_inverse = sort_slots(expert_TK, keep_TK, E)
        N, S = e_order.numel(), T * K  # kept slots (M) and all slots
        _int_vector(SORT, "counts_E", counts, E, case, ": torch.bincount(..., minlength=E)")
        if not torch.equal(counts.long(), e_counts):
            all_E = torch.bincount(expert_TK.reshape(-1), minlength=E)
            if N < S and torch.equal(counts.long(), all_E):
                raise SORT.fail(f"counts_E on {case} counts the dropped slots too; count kept ones")
            raise SORT.fail(
                f"counts_E on {case} is {counts.tolist()}, expected {e_counts.tolist()}"
            )
        more = ": only the kept slots are sorted" if order.numel() == S and N < S else ""
        _int_vector(SORT, "order_M", order, N, case, more)
        _check_order(order.long(), e_order, expert_TK, case)
        more = ": the E cumulative ends, no leading 0" if offsets.numel() == E + 1 else ""
        _int_vector(SORT, "offsets_E", offsets, E, case, more)
        if not torch.equal(offsets.long(), e_offsets.long()):
            starts = e_offsets.long() - e_counts
            why = (
                "exclusive (the starts); offsets_E are the cumulative ends, torch.cumsum(counts)"
                if torch.equal(offsets.long(), starts)
                else f"{offsets.tolist()}, expected {e_offsets.tolist()}"
            )
            raise SORT.fail(f"offsets_E on {case} are {why}")
        if (
            inverse.numel() == N
            and torch.equal(inverse.long(), e_order)
            and not torch.equal(e_order, e_inverse)
        ):
            raise SORT.fail(
                f"inverse_N on {case} equals order_M: you forgot to invert the permutation "
                "(inverse[order[i]] = i)"
            )
        more = ": one entry per slot (T*K), -1 for a dropped slot" if inverse.numel() == N else ""
        _int_vector(SORT, "inverse_N", inverse, S, case, more)
        if not torch.equal(inverse.long(), e_inverse):
            kept = e_inverse >= 0
            if torch.equal(inverse.long()[kept], e_inverse[kept]):
                raise SORT.fail(f"inverse_N on {case}: a dropped slot must have -1")
            raise SORT.fail(
                f"inverse_N on {case} is {inverse.tolist()}, expected {e_inverse.tolist()}"
            )
    SORT.passed(f"{len(cases)} cases, incl. drops, empty experts, T=0, K=E")


def _check_order(order: torch.Tensor, expected: torch.Tensor, expert_TK: torch.Tensor, case: str):
    if torch.equal(order, expected):
        return
    T, K = expert_TK.shape
    if order.numel() and torch.equal(order, expected // K) and K > 1:
        raise SORT.fail(f"order_M on {case} holds token ids; it holds slot ids s = t * K + k")
    flat = expert_TK.reshape(-1)
    if order.numel() and K > 1 and int(order.min()) >= 0 and int(order.max()) < T * K:
        as_t_major = (order % T) * K + order // T  # read the ids as k * T + t
        if torch.equal(as_t_major.sort()[0], expected.sort()[0]) and torch.equal(
            flat[as_t_major], flat[expected]
        ):
            raise SORT.fail(
                f"order_M on {case} numbers the slots k-major (k * T + t); a slot's id is "
                "t * K + k, its place in expert_TK.reshape(-1)"
            )
    in_range = order.numel() == 0 or (int(order.min()) >= 0 and int(order.max()) < T * K)
    if in_range:
        if torch.equal(flat[order], flat[expected]) and torch.equal(
            order.sort()[0], expected.sort()[0]
        ):
            raise SORT.fail(
                f"order_M on {case} groups the right slots by expert but not in token order "
                "within an expert: use a stable sort, torch.sort(..., stable=True)"
            )
        if torch.equal(flat[order], flat[expected].flip(0)):
            raise SORT.fail(f"order_M on {case} sorts the experts in descending order")
    raise SORT.fail(f"order_M on {case} is {order.tolist()}, expected {expected.tolist()}")


# --- 05.3 the padded batched matmul ----------------------------------------------------------
