"""Checks for chapter 10, exercises 10.2 (an LRU expert cache) and 10.3 (Belady's policy).

Both replay a trace of expert requests (keys, in the order the offloaded runtime asks for them)
against a cache that holds `cache_size` keys and return, for each request, whether it was a hit.
The answers are compared with `minimoe.serving.lru_hits` and `minimoe.serving.belady_hits` on a
textbook trace (Silberschatz, Galvin and Gagne, "Operating System Concepts", ch. 10, the
reference string 7 0 1 2 0 3 0 4 2 3 0 3 2 1 2 0 1 7 0 1 with 3 frames: 12 misses under LRU, 9
under the optimal policy, 15 under FIFO), on seeded skewed traces like the ones routing produces,
and on the edges (an empty trace, a cache of 0, a cache that holds every key).

A wrong answer is replayed against the policies learners write by mistake, each a small switch of
one simulator below (`_replay`): FIFO (a hit does not refresh recency), evicting the most recent
key, a cache one key too small or too large, hits and misses swapped; for Belady, evicting the key
needed soonest, LRU, a key never needed again treated as needed now, the first request of each
key in the whole trace taken for its next one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from minimoe.course.checks._common import Exercise
from minimoe.serving import belady_hits, lru_hits

LRU = Exercise("10.2", "an LRU expert cache", library=(lru_hits,))
BELADY = Exercise("10.3", "Belady's optimal policy", library=(belady_hits,))

# Silberschatz et al., "Operating System Concepts", the chapter on virtual memory
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def skewed_trace(n: int, n_keys: int, seed: int) -> list[int]:
    """A seeded trace of `n` requests over `n_keys` keys, skewed (key i weighs 1/(i+1)) and with
    runs of repeats, as routing traces have (a popular expert, the same expert for a few tokens)."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(n_keys)]
    keys = list(range(n_keys))
    rng.shuffle(keys)
    trace: list[int] = []
    while len(trace) < n:
        key = rng.choices(keys, weights)[0]
        trace.extend([key] * rng.choice((1, 1, 1, 2, 3)))
    return trace[:n]


# (trace, cache size, what the case is)
CACHE_CASES: list[tuple[list[int], int, str]] = [
    (TEXTBOOK, 3, "the textbook trace, cache of 3"),
    (TEXTBOOK, 4, "the textbook trace, cache of 4"),
    (skewed_trace(60, 10, seed=101), 4, "a skewed trace of 60 requests over 10 keys, cache of 4"),
    (skewed_trace(80, 16, seed=102), 6, "a skewed trace of 80 requests over 16 keys, cache of 6"),
    (skewed_trace(40, 6, seed=103), 1, "a skewed trace of 40 requests, cache of 1"),
    ([1, 2, 3, 1, 2, 3], 3, "a cache that holds every key"),
    ([5, 5, 6, 5], 0, "a cache of 0 (nothing is ever cached)"),
    ([], 2, "an empty trace"),
]


def _replay(trace: Sequence[int], size: int, policy: str, *, refresh: bool = True,
            victim: str = "oldest", extra: int = 0, never: str = "farthest") -> list[bool]:  # fmt: skip
    """A cache replay with switches that make it one of the mistakes.

    Args:
        policy: "recency" (LRU and its mistakes) or "future" (Belady and its mistakes).
        refresh: a hit moves the key to the most recent end (False: FIFO).
        victim: for "recency", "oldest" (LRU/FIFO) or "newest" (MRU); for "future", "farthest"
            (Belady), "nearest", or "first" (the key whose FIRST request in the trace is
            farthest, not its next one after now).
        extra: added to the capacity (an off-by-one).
        never: the next use of a key never requested again: "farthest" or "now".
    """
    capacity = max(size + extra, 0)
    order: list[int] = []  # cached keys, least recent first
    hits: list[bool] = []
    for i, key in enumerate(trace):
        if key in order:
            hits.append(True)
            if refresh:
                order.remove(key)
                order.append(key)
            continue
        hits.append(False)
        if capacity == 0:
            continue
        if len(order) >= capacity:
            if policy == "recency":
                order.pop(0 if victim == "oldest" else -1)
            else:
                order.remove(_future_victim(trace, i, order, victim, never))
        order.append(key)
    return hits


def _future_victim(trace: Sequence[int], i: int, cached: list[int], victim: str, never: str) -> int:
    def next_use(key: int) -> float:
        rest = trace if victim == "first" else trace[i + 1 :]
        if key in rest:
            return rest.index(key)
        return float("inf") if never == "farthest" else -1.0

    if victim == "nearest":
        return min(cached, key=next_use)
    return max(cached, key=next_use)


def _lru_variants() -> list[tuple[str, Callable[[Sequence[int], int], list[bool]]]]:
    def v(**kw: Any) -> Callable[[Sequence[int], int], list[bool]]:
        return lambda trace, size: _replay(trace, size, "recency", **kw)

    return [
        (
            "a hit does not refresh the key's recency, so the cache evicts the key inserted "
            "longest ago (that is FIFO): on a hit, move the key to the most recent end",
            v(refresh=False),
        ),
        (
            "evicted the most recently used key; LRU evicts the LEAST recently used one",
            v(victim="newest"),
        ),
        (
            "the cache holds one key too few (off by one): evict only when it already holds "
            "cache_size keys, `len(cache) >= cache_size` before inserting, not `>= cache_size - 1`",
            v(extra=-1),
        ),
        (
            "the cache holds one key too many (off by one): evict when it already holds "
            "cache_size keys, `len(cache) >= cache_size`, not `> cache_size`",
            v(extra=1),
        ),
    ]


def _belady_variants() -> list[tuple[str, Callable[[Sequence[int], int], list[bool]]]]:
    def v(**kw: Any) -> Callable[[Sequence[int], int], list[bool]]:
        return lambda trace, size: _replay(trace, size, "future", **kw)

    def lru(trace: Sequence[int], size: int) -> list[bool]:
        return _replay(trace, size, "recency")

    return [
        (
            "evicted the key whose next request comes SOONEST; Belady evicts the one needed "
            "farthest in the future",
            v(victim="nearest"),
        ),
        (
            "a key that is never requested again was treated as needed soon; it is the best "
            "victim of all (its next request is infinitely far)",
            v(never="now"),
        ),
        (
            "looked up each key's first request in the whole trace; look for its next request "
            "after the current position (trace[i + 1:])",
            v(victim="first"),
        ),
        ("this is LRU (it evicts by the past); Belady evicts by the future trace", lru),
        (
            "the cache holds one key too few (off by one): evict only when it already holds "
            "cache_size keys",
            v(extra=-1),
        ),
        (
            "the cache holds one key too many (off by one): evict when it already holds "
            "cache_size keys",
            v(extra=1),
        ),
    ]


def _as_hits(ex: Exercise, out: Any, n: int, case: str) -> list[bool]:
    if out is None:
        raise ex.fail(f"returned None on {case}: did you forget the `return`?")
    if isinstance(out, (int, float)):
        raise ex.fail(
            f"returned the number {out} on {case}; return one bool per request (a list), "
            "True where the request was a hit"
        )
    try:
        items = list(out)
    except TypeError:
        raise ex.fail(
            f"returned a {type(out).__name__} on {case}; return a list of bools"
        ) from None
    if len(items) != n:
        raise ex.fail(f"returned {len(items)} values on {case}; expected one per request, {n}")
    hits = []
    for item in items:
        try:
            value = item.item() if hasattr(item, "item") else item
        except (TypeError, ValueError, RuntimeError):
            value = None
        if value not in (True, False, 0, 1):
            raise ex.fail(f"returned {item!r} on {case}; each value must be True (hit) or False")
        hits.append(bool(value))
    return hits


def _show(hits: Sequence[bool]) -> str:
    """'H M M H', short enough for a message."""
    text = " ".join("H" if h else "M" for h in hits)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_policy(ex: Exercise, fn: Callable, reference: Callable, variants: list) -> int:
    for trace, size, what in CACHE_CASES:
        case = f"{what} (trace {_show_trace(trace)})"
        out = ex.call(fn, list(trace), size, case=what)
        hits = _as_hits(ex, out, len(trace), what)
        expected = [bool(h) for h in reference(list(trace), size)]
        if hits == expected:
            continue
        where = next(i for i, (a, b) in enumerate(zip(hits, expected)) if a != b)
        said = (
            f"wrong hits on {case}, cache_size={size}: first difference at request {where} "
            f"(key {trace[where]}): you said {'hit' if hits[where] else 'miss'}.\n"
            f"  yours:    {_show(hits)}\n  expected: {_show(expected)}"
        )
        if hits == [not h for h in expected] and trace:
            raise ex.fail(f"{said}\nLikely mistake: hits and misses swapped: True means a hit")
        if size == 0 and any(hits):
            raise ex.fail(f"{said}\nWith cache_size 0 nothing is ever cached: every request misses")
        for hint, wrong in variants:
            candidate = wrong(list(trace), size)
            if candidate == hits and candidate != expected:
                raise ex.fail(f"{said}\nLikely mistake: {hint}")
        raise ex.fail(said)
    return len(CACHE_CASES)


def _show_trace(trace: Sequence[int]) -> str:
    text = " ".join(map(str, trace))
    return text if len(text) <= 60 else text[:57] + "..."


def check_lru_hits(fn: Callable) -> None:
    """Check `lru_hits(trace, cache_size) -> list[bool]` against `minimoe.serving.lru_hits`."""
    n = _check_policy(LRU, fn, lru_hits, _lru_variants())
    LRU.passed(f"{n} traces, incl. the textbook one, a cache of 0 and an empty trace")


def check_belady_hits(fn: Callable) -> None:
    """Check `belady_hits(trace, cache_size) -> list[bool]` against
    `minimoe.serving.belady_hits`."""
    n = _check_policy(BELADY, fn, belady_hits, _belady_variants())
    BELADY.passed(f"{n} traces, incl. the textbook one, a cache of 0 and an empty trace")
