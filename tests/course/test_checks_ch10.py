"""The chapter 10 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import pytest
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe.course.checks.ch10_cache import (
    BELADY,
    CACHE_CASES,
    LRU,
    TEXTBOOK,
    _replay,
    check_belady_hits,
    check_lru_hits,
)
from minimoe.course.checks.ch10_experts import EXPERTS_TOUCHED, check_expected_experts_touched
from minimoe.course.checks.ch10_roofline import DECODE_STEP, check_decode_step
from minimoe.serving import (
    arithmetic_intensity,
    belady_hits,
    decode_step_bytes,
    decode_step_flops,
    expected_experts_touched,
    lru_hits,
)

# --- 10.1 experts touched by a decode batch ------------------------------------------------------


def touched(n_experts, top_k, batch):
    """The right answer, as the solution notebook writes it."""
    return n_experts * (1 - (1 - top_k / n_experts) ** batch)


def touched_by_sum(n_experts, top_k, batch):
    """Also right: the sum over experts of P(touched), with math.pow."""
    return sum(1 - math.pow(1 - top_k / n_experts, batch) for _ in range(n_experts))


def test_experts_touched_passes(capsys) -> None:
    check_expected_experts_touched(touched)
    check_expected_experts_touched(touched_by_sum)
    out = capsys.readouterr().out
    assert "✓ Exercise 10.1 (experts touched by a decode batch): passed" in out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda E, K, B: 1 - (1 - K / E) ** B, ["probability that one given expert"]),
        (lambda E, K, B: min(B * K, E), ["no two tokens ever share"]),
        (lambda E, K, B: B * K, ["even beyond E"]),
        (lambda E, K, B: E * (1 - K / E) ** B, ["NOT touched"]),
        (lambda E, K, B: E * (1 - (1 - 1 / E) ** (B * K)), ["with replacement"]),
        (lambda E, K, B: E * (1 - (1 - 1 / E) ** B), ["forgets K"]),
        (lambda E, K, B: E * (K / E) ** B, ["EVERY token"]),
        (lambda E, K, B: round(touched(E, K, B)), ["rounded"]),
        (lambda E, K, B: None, ["forget the `return`"]),
        (lambda E, K, B: [touched(E, K, B)], ["return a number"]),
        (lambda E, K, B: touched(E, K, B) + 0.5, ["expected"]),
        (expected_experts_touched, ["library's own"]),
        (lambda E, K, B: expected_experts_touched(E, K, B), ["calls the library's own"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_experts_touched_wrong(answer, words) -> None:
    fails_with(check_expected_experts_touched, answer, "Exercise 10.1", *words)


# --- 10.2 an LRU expert cache --------------------------------------------------------------------


def lru(trace, cache_size):
    """The right answer, with an OrderedDict."""
    cache, hits = OrderedDict(), []
    for key in trace:
        hit = key in cache
        hits.append(hit)
        if hit:
            cache.move_to_end(key)
        elif cache_size > 0:
            if len(cache) == cache_size:
                cache.popitem(last=False)
            cache[key] = True
    return hits


def lru_by_timestamps(trace, cache_size):
    """Also right: remember when each key was last used, evict the smallest time."""
    last_used, hits = {}, []
    for t, key in enumerate(trace):
        hits.append(key in last_used)
        if key not in last_used and cache_size and len(last_used) >= cache_size:
            del last_used[min(last_used, key=last_used.get)]
        if cache_size:
            last_used[key] = t
    return hits


def fifo(trace, cache_size):
    """A learner's FIFO: a queue, and a hit leaves it as it is."""
    queue, hits = deque(), []
    for key in trace:
        hits.append(key in queue)
        if key not in queue and cache_size > 0:
            if len(queue) == cache_size:
                queue.popleft()
            queue.append(key)
    return hits


def lru_capacity(trace, cache_size, evict_at):
    """LRU with the eviction test written wrong: evict when len(cache) reaches `evict_at(N)`."""
    cache, hits = [], []
    for key in trace:
        hits.append(key in cache)
        if key in cache:
            cache.remove(key)
        elif cache_size <= 0:
            continue
        elif cache and len(cache) >= evict_at(cache_size):
            cache.pop(0)
        cache.append(key)
    return hits


def mru(trace, cache_size):
    """Evicts the key used last instead of the one used longest ago."""
    cache, hits = [], []
    for key in trace:
        hits.append(key in cache)
        if key in cache:
            cache.remove(key)
        elif cache_size and len(cache) == cache_size:
            cache.pop()
        if cache_size:
            cache.append(key)
    return hits


def test_lru_reference_agrees_with_the_textbook_and_the_library() -> None:
    misses = {name: sum(not h for h in f(TEXTBOOK, 3)) for name, f in
              [("lru", lru), ("fifo", fifo), ("lib", lru_hits), ("belady", belady_hits)]}  # fmt: skip
    assert misses == {"lru": 12, "fifo": 15, "lib": 12, "belady": 9}
    for trace, size, _ in CACHE_CASES:
        assert lru(trace, size) == lru_hits(trace, size) == _replay(trace, size, "recency")


def test_lru_passes(capsys) -> None:
    check_lru_hits(lru)
    check_lru_hits(lru_by_timestamps)
    check_lru_hits(lambda t, n: tuple(int(h) for h in lru(t, n)))  # 0/1 in a tuple is fine
    assert f"✓ Exercise 10.2 ({LRU.title}): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (fifo, ["FIFO", "refresh"]),
        (mru, ["most recently used"]),
        (lambda t, n: lru_capacity(t, n, lambda n: n - 1), ["one key too few"]),
        (lambda t, n: lru_capacity(t, n, lambda n: n + 1), ["one key too many"]),
        (lambda t, n: [not h for h in lru(t, n)], ["swapped"]),
        (lambda t, n: sum(lru(t, n)), ["return one bool per request"]),
        (lambda t, n: lru(t, n)[1:], ["one per request"]),
        (lambda t, n: None, ["forget the `return`"]),
        (lambda t, n: lru(t, max(n, 1)), ["cache_size 0", "every request misses"]),
        (lru_hits, ["library's own"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_lru_wrong(answer, words) -> None:
    fails_with(check_lru_hits, answer, "Exercise 10.2", *words)


# --- 10.3 Belady's optimal policy ----------------------------------------------------------------


def belady(trace, cache_size, *, pick=max, never=math.inf, first=False, size_shift=0):
    """The right answer (scan ahead for each cached key's next request), with switches for a
    learner's mistake."""
    cache, hits = set(), []
    capacity = cache_size + size_shift
    for i, key in enumerate(trace):
        hits.append(key in cache)
        if key in cache or capacity <= 0:
            continue
        if len(cache) >= capacity:
            ahead = trace if first else trace[i + 1 :]
            distance = {k: ahead.index(k) if k in ahead else never for k in sorted(cache)}
            cache.remove(pick(distance, key=distance.get))
        cache.add(key)
    return hits


def test_belady_reference_agrees_with_the_library_and_beats_lru() -> None:
    for trace, size, _ in CACHE_CASES:
        assert belady(trace, size) == belady_hits(trace, size) == _replay(trace, size, "future")
        assert sum(belady(trace, size)) >= sum(lru(trace, size))


def test_belady_passes(capsys) -> None:
    check_belady_hits(belady)
    assert f"✓ Exercise 10.3 ({BELADY.title}): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda t, n: belady(t, n, pick=min), ["SOONEST"]),
        (lambda t, n: belady(t, n, never=-1), ["never requested again"]),
        (lambda t, n: belady(t, n, first=True), ["first request", "trace[i + 1:]"]),
        (lru, ["this is LRU"]),
        (lambda t, n: belady(t, n, size_shift=-1), ["one key too few"]),
        (lambda t, n: belady(t, n, size_shift=1), ["one key too many"]),
        (lambda t, n: [not h for h in belady(t, n)], ["swapped"]),
        (belady_hits, ["library's own"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_belady_wrong(answer, words) -> None:
    fails_with(check_belady_hits, answer, "Exercise 10.3", *words)


# --- 10.4 the bytes and intensity of a decode step ----------------------------------------------


def decode_step(shape, batch, context_len, *, experts="expected", kv_seqs=None, kv_layers=None,
                layers=None, per_weight=2, invert=False, flops_per_token=False):  # fmt: skip
    """The right answer, with switches for a learner's mistake."""
    E, K = shape.n_experts, shape.top_k
    touched = {"expected": E * (1 - (1 - K / E) ** batch), "all": E, "K": K,
               "BK": batch * K, "min": min(batch * K, E)}[experts]  # fmt: skip
    layers = shape.n_moe_layers if layers is None else layers
    weights = shape.always_read_params + layers * touched * shape.expert_params
    kv_seqs = batch if kv_seqs is None else kv_seqs
    kv_layers = shape.n_layers if kv_layers is None else kv_layers
    kv = kv_seqs * context_len * shape.kv_per_position * kv_layers
    nbytes = per_weight * weights + 2 * kv
    flops = decode_step_flops(shape, batch, context_len)
    if flops_per_token:
        flops /= batch
    return nbytes, (nbytes / flops if invert else flops / nbytes)


@pytest.mark.slow  # the first real_model_shape imports transformers (5 to 15 s)
def test_decode_step_passes(capsys) -> None:
    check_decode_step(decode_step)
    check_decode_step(lambda s, b, c: [decode_step(s, b, c)[0], decode_step(s, b, c)[1]])
    assert f"✓ Exercise 10.4 ({DECODE_STEP.title}): passed" in capsys.readouterr().out


def with_(**kw):
    return lambda s, b, c: decode_step(s, b, c, **kw)


def kv_twice(shape, batch, context_len):
    nbytes, _ = decode_step(shape, batch, context_len)
    nbytes += 2 * batch * context_len * shape.kv_per_position * shape.n_layers
    return nbytes, decode_step_flops(shape, batch, context_len) / nbytes


@pytest.mark.parametrize(
    "answer, words",
    [
        (with_(experts="all"), ["read every expert"]),
        (with_(experts="K"), ["as for one token"]),
        (with_(experts="BK"), ["B·K experts", "no two tokens"]),
        (with_(experts="min"), ["min(B·K, E)", "no two tokens"]),
        (with_(kv_seqs=0), ["left out the KV cache"]),
        (with_(kv_seqs=1), ["one sequence"]),
        (with_(kv_layers=1), ["one layer"]),
        (kv_twice, ["counted K and V twice"]),
        (lambda s, b, c: decode_step(s, b, c, layers=s.n_layers), ["n_moe_layers"]),
        (with_(per_weight=4), ["4 bytes per weight"]),
        (with_(invert=True), ["bytes / FLOPs"]),
        (with_(flops_per_token=True), ["divided the FLOPs by the batch"]),
        (lambda s, b, c: (decode_step(s, b, c)[0], 1.0), ["the bytes are right"]),
        (lambda s, b, c: decode_step(s, b, c)[0], ["return 2 numbers"]),
        (lambda s, b, c: None, ["forget the `return`"]),
        (
            lambda s, b, c: (decode_step_bytes(s, b, c), arithmetic_intensity(s, b, c)),
            ["calls the library's own"],
        ),  # fmt: skip
        (not_done, ["not solved yet"]),
    ],
)
def test_decode_step_wrong(answer, words) -> None:
    fails_with(check_decode_step, answer, "Exercise 10.4", *words)


def test_check_cells_match() -> None:
    assert_check_cells_match(["10_serving.ipynb"], (EXPERTS_TOUCHED, LRU, BELADY, DECODE_STEP))
