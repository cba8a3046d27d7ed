"""Checks for chapter 09 (expert parallelism): the send counts of the dispatch, the permutation
that groups slots by destination rank (and its inverse), and an expert-to-rank placement.

All three run in one process: they are the planning a rank does before its all-to-all. Each check
compares the learner's function with `minimoe.distributed` (`send_counts`, `order_by_rank`,
`greedy_placement`) on seeded routings: a contiguous placement and a shuffled one, a rank that
receives nothing, every slot on one rank, T = 0, K = E. A wrong answer is matched against known
wrong variants (counting per expert instead of per rank, the placement assumed contiguous, a
missing `minlength`, an unstable sort, the permutation not inverted, slots sorted by expert only,
a rank holding more than its share of experts, ...) and the message names the mistake.

The placement is graded by what it achieves, not by equality with the library: any placement
where every rank holds exactly E / W experts and no more slots cross ranks than under the
library's greedy rule passes (a better one too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise, make_generator, make_routing
from minimoe.distributed import (
    cross_rank_slots,
    expert_ranks,
    greedy_placement,
    order_by_rank,
    send_counts,
)

SEND = Exercise("09.1", "send counts of the dispatch", library=(send_counts,))
ORDER = Exercise("09.2", "group slots by destination rank", library=(order_by_rank,))
PLACE = Exercise("09.3", "an expert-to-rank placement", library=(greedy_placement,))


def _call(ex: Exercise, fn: Callable, *args: Any, case: str) -> Any:
    """`ex.call` on clones of the inputs (a learner's in-place edit cannot change the reference)."""
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    return ex.call(fn, *args, case=case)


def _shuffled_placement(n_experts: int, world_size: int, seed: int) -> torch.Tensor:
    """A non-contiguous placement, still E / W experts per rank (a permuted contiguous one)."""
    rank_E = expert_ranks(n_experts, world_size)
    return rank_E[torch.randperm(n_experts, generator=make_generator(seed))]


def _int_vector(ex: Exercise, name: str, got: Any, n: int, case: str, hint: str = "") -> None:
    if got is None:
        raise ex.fail(f"returned None on {case}: did you forget the `return`?")
    if not isinstance(got, torch.Tensor):
        raise ex.fail(f"{name} must be a torch.Tensor on {case}, got {type(got).__name__}")
    if got.is_floating_point() or got.dtype == torch.bool:
        raise ex.fail(f"{name} must be an integer tensor on {case}, got {got.dtype}")
    if tuple(got.shape) != (n,):
        raise ex.fail(f"{name} has shape {tuple(got.shape)} on {case}, expected ({n},){hint}")


# (T, E, K, W, placement, only_expert): the routings every check runs on
_CASES = [
    (8, 4, 2, 2, "contiguous", None),
    (16, 8, 2, 4, "shuffled", None),  # rank_E is not e // (E // W)
    (12, 8, 2, 4, "contiguous", 1),  # every token's first choice on rank 0
    (6, 8, 1, 4, "contiguous", None),  # some rank receives nothing
    (64, 8, 2, 2, "shuffled", None),  # long enough that an unstable sort reorders ties
    (5, 4, 4, 2, "shuffled", None),  # K = E
    (1, 4, 2, 4, "contiguous", None),  # T = 1: two ranks receive nothing
    (0, 4, 2, 2, "contiguous", None),  # T = 0
]


def _case(i: int, T: int, E: int, K: int, W: int, placement: str, only: int | None):
    expert_TK, _, _ = make_routing(T, E, K, seed=900 + i, only_expert=only)
    if T == 6 and K == 1:  # no slot for rank 3: experts 6 and 7 are never chosen
        expert_TK = expert_TK % 6
    rank_E = expert_ranks(E, W) if placement == "contiguous" else _shuffled_placement(E, W, i)
    desc = f"T={T}, E={E}, K={K}, W={W}, {placement} placement rank_E={rank_E.tolist()}"
    return expert_TK.reshape(-1), rank_E, desc


# --- 09.1 send counts ----------------------------------------------------------------------------


def check_send_counts(send_counts_fn: Callable) -> None:
    """Check `send_counts(expert_N, rank_E, world_size) -> send_W` (int, (W,)): how many of this
    rank's slots go to each destination rank, against `minimoe.distributed.send_counts`."""
    for i, (T, E, K, W, placement, only) in enumerate(_CASES):
        expert_N, rank_E, case = _case(i, T, E, K, W, placement, only)
        got = _call(SEND, send_counts_fn, expert_N, rank_E, W, case=case)
        want = send_counts(expert_N, rank_E, W)
        per_expert = torch.bincount(expert_N, minlength=E)
        if isinstance(got, torch.Tensor) and got.numel() == E != W:
            if torch.equal(got.long(), per_expert):
                raise SEND.fail(
                    f"on {case} you returned the slots per expert ({E} values); the all-to-all "
                    f"needs them per destination rank ({W} values): map each slot's expert to "
                    "its rank with rank_E first"
                )
        if isinstance(got, torch.Tensor) and got.dim() == 1 and got.numel() < W:
            raise SEND.fail(
                f"send_W has {got.numel()} values on {case}, expected W={W}: a rank that "
                "receives no slot still needs its 0 (torch.bincount(..., minlength=world_size))"
            )
        _int_vector(SEND, "send_W", got, W, case)
        if torch.equal(got.long(), want):
            continue
        contiguous = torch.bincount(expert_N // (E // W), minlength=W)
        round_robin = torch.bincount(expert_N % W, minlength=W)
        if torch.equal(got.long(), contiguous):
            raise SEND.fail(
                f"on {case} you computed each slot's rank as expert // (E // W), which is right "
                "only for the contiguous placement; look it up in rank_E: rank_E[expert_N]"
            )
        if torch.equal(got.long(), round_robin):
            raise SEND.fail(
                f"on {case} you computed each slot's rank as expert % W; look it up in the "
                "placement instead: rank_E[expert_N]"
            )
        if int(got.sum()) == T and T != T * K:
            raise SEND.fail(
                f"send_W sums to {int(got.sum())} on {case}, the number of tokens: count every "
                f"slot (T*K = {T * K}), a token with K experts is sent up to K times"
            )
        raise SEND.fail(f"send_W on {case} is {got.tolist()}, expected {want.tolist()}")
    SEND.passed(f"{len(_CASES)} cases, incl. a shuffled placement, an idle rank, T=0")


# --- 09.2 group by destination rank --------------------------------------------------------------


def _permutation(ex: Exercise, name: str, got: Any, n: int, case: str) -> torch.Tensor:
    _int_vector(ex, name, got, n, case)
    got = got.long()
    if n and not torch.equal(got.sort().values, torch.arange(n)):
        raise ex.fail(
            f"{name} on {case} is not a permutation of 0 .. {n - 1}: each slot must appear once"
        )
    return got


def check_order_by_rank(order_fn: Callable) -> None:
    """Check `order_by_rank(expert_N, rank_E) -> (order_N, inverse_N)`: a stable sort of the slots
    by (destination rank, expert), and the permutation that undoes it."""
    for i, (T, E, K, W, placement, only) in enumerate(_CASES):
        expert_N, rank_E, case = _case(i, T, E, K, W, placement, only)
        out = _call(ORDER, order_fn, expert_N, rank_E, case=case)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            got = type(out).__name__ if not isinstance(out, (tuple, list)) else f"{len(out)} values"
            raise ORDER.fail(f"return 2 tensors (order_N, inverse_N) on {case}; got {got}")
        N = expert_N.numel()
        order = _permutation(ORDER, "order_N", out[0], N, case)
        inverse = _permutation(ORDER, "inverse_N", out[1], N, case)
        want_order, want_inverse = order_by_rank(expert_N, rank_E)
        _diagnose_order(order, want_order, expert_N, rank_E, case)
        if not torch.equal(inverse, want_inverse):
            if torch.equal(inverse, order) and not torch.equal(want_order, want_inverse):
                raise ORDER.fail(
                    f"inverse_N on {case} equals order_N: you forgot to invert the permutation "
                    "(inverse_N[order_N[i]] = i, so that x_sorted[inverse_N] == x)"
                )
            raise ORDER.fail(
                f"inverse_N on {case} does not undo order_N: x[order_N][inverse_N] must give x "
                "back (inverse_N[order_N[i]] = i)"
            )
    ORDER.passed(f"{len(_CASES)} cases, incl. a shuffled placement, 128 slots, T=0, K=E")


def _diagnose_order(
    order: torch.Tensor, want: torch.Tensor, expert_N: torch.Tensor, rank_E: torch.Tensor, case: str
) -> None:
    if torch.equal(order, want):
        return
    E = rank_E.numel()
    key_N = rank_E[expert_N] * E + expert_N
    if torch.equal(key_N[order], key_N[want]):  # the right groups, ties in another order
        raise ORDER.fail(
            f"order_N on {case} groups the slots right but reorders the slots of one expert: "
            "use a stable sort (torch.sort(..., stable=True)), so each expert's slots stay in "
            "token order"
        )
    by_expert = torch.sort(expert_N, stable=True).indices
    if torch.equal(order, by_expert):
        raise ORDER.fail(
            f"order_N on {case} sorts by expert only; with this placement an expert's number "
            "does not say its rank, so one rank's slots are not contiguous. Sort by the key "
            "rank_E[expert] * E + expert"
        )
    by_rank = torch.sort(rank_E[expert_N], stable=True).indices
    if torch.equal(order, by_rank):
        raise ORDER.fail(
            f"order_N on {case} groups the slots by rank but not by expert within a rank: sort "
            "by the key rank_E[expert] * E + expert, so the receiving rank gets one run per expert"
        )
    if torch.equal(key_N[order], key_N[want].flip(0)):
        raise ORDER.fail(f"order_N on {case} sorts in descending order")
    raise ORDER.fail(f"order_N on {case} is {order.tolist()}, expected {want.tolist()}")


# --- 09.3 placement ------------------------------------------------------------------------------


def _local_traces() -> list[tuple[str, torch.Tensor, int]]:
    """(description, count_WE, experts_per_rank): the traces the placement is graded on."""
    g = make_generator(930)
    traces = [
        # expert 3 is popular on both ranks: placing by raw count wastes a rank's place on it
        ("a hand case", torch.tensor([[10, 0, 10, 100], [0, 10, 0, 100]]), 2),
        ("no slots at all (T = 0)", torch.zeros(2, 4, dtype=torch.long), 2),
        ("one rank (W = 1)", torch.tensor([[3, 0, 5, 1]]), 4),
    ]
    # ranks whose tokens prefer their own experts, numbered round-robin (rank w likes e % W == w)
    for W, E in ((2, 8), (4, 8), (4, 16)):
        prefer_WE = torch.stack([(torch.arange(E) % W == w).float() * 3.0 for w in range(W)])
        logits = torch.randn(W, 200, E, generator=g) + prefer_WE[:, None, :]
        expert_WTK = logits.topk(2, dim=-1).indices
        count_WE = torch.stack([torch.bincount(e.reshape(-1), minlength=E) for e in expert_WTK])
        traces.append((f"W={W}, E={E}, ranks preferring their own experts", count_WE, E // W))
    # skewed, with a different favourite per rank
    W, E = 4, 8
    prior = -1.5 * torch.log(torch.arange(1, E + 1, dtype=torch.float32))
    rows = []
    for _ in range(W):
        perm = torch.randperm(E, generator=g)
        logits = torch.randn(300, E, generator=g) + prior[perm]
        rows.append(torch.bincount(logits.topk(2, dim=-1).indices.reshape(-1), minlength=E))
    traces.append(("W=4, E=8, each rank skewed to other experts", torch.stack(rows), 2))
    return traces


def _raw_count_greedy(count_WE: torch.Tensor, experts_per_rank: int) -> torch.Tensor:
    """The greedy rule ordered by raw counts instead of gains (a named mistake)."""
    W, E = count_WE.shape
    pairs = sorted((-int(count_WE[w, e]), e, w) for e in range(E) for w in range(W))
    rank_E = torch.full((E,), -1, dtype=torch.long)
    held = [0] * W
    for _, e, w in pairs:
        if rank_E[e] < 0 and held[w] < experts_per_rank:
            rank_E[e], held[w] = w, held[w] + 1
    return rank_E


def check_placement(placement_fn: Callable) -> None:
    """Check `placement(count_WE, experts_per_rank) -> rank_E`: valid (each rank exactly
    experts_per_rank experts) and with no more cross-rank slots than the library's greedy rule."""
    traces = _local_traces()
    for desc, count_WE, J in traces:
        W, E = count_WE.shape
        case = f"{desc} (count_WE={count_WE.tolist()})" if E <= 4 else desc
        got = _call(PLACE, placement_fn, count_WE, J, case=case)
        _int_vector(PLACE, "rank_E", got, E, case, ": one rank per expert")
        got = got.long()
        if int(got.min()) < 0 or int(got.max()) >= W:
            raise PLACE.fail(
                f"rank_E on {case} holds rank {int(got.min()) if int(got.min()) < 0 else int(got.max())}"
                f": ranks run 0 .. {W - 1} (is an expert left unplaced, -1?)"
            )
        held_W = torch.bincount(got, minlength=W)
        if not bool((held_W == J).all()):
            w = int(torch.argmax((held_W != J).int()))
            argmax = torch.argmax(count_WE, dim=0)
            why = (
                ": each expert went to the rank that sends it most, with no limit per rank"
                if torch.equal(got, argmax)
                else ""
            )
            raise PLACE.fail(
                f"on {case} rank {w} holds {int(held_W[w])} experts, but every rank must hold "
                f"exactly experts_per_rank = {J} (its memory holds no more){why}"
            )
        mine = cross_rank_slots(count_WE, got)
        ref = cross_rank_slots(count_WE, greedy_placement(count_WE, J))
        if mine <= ref:
            continue
        contiguous = expert_ranks(E, W)
        if torch.equal(got, contiguous):
            raise PLACE.fail(
                f"on {case} you returned the contiguous placement ({mine} slots cross ranks, the "
                f"greedy rule gets {ref}): put each expert where its slots come from"
            )
        if torch.equal(got, _raw_count_greedy(count_WE, J)):
            raise PLACE.fail(
                f"on {case} {mine} slots cross ranks, the greedy rule gets {ref}: you ordered the "
                "(expert, rank) pairs by raw count, so an expert every rank uses equally takes a "
                "rank's place from one that rank uses more than the others. Order by the gain: "
                "count_WE[w, e] minus the mean of count_WE[:, e] over ranks"
            )
        raise PLACE.fail(
            f"on {case} your placement {got.tolist()} sends {mine} slots across ranks; the "
            f"library's greedy rule sends {ref}"
        )
    PLACE.passed(f"{len(traces)} traces, never more cross-rank slots than the greedy rule")
