"""The expert cache policies: hand-worked traces, the textbook LRU/Belady example, Belady as the
ceiling on random traces, and bad input."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from minimoe.serving import (
    BeladyCache,
    LRUCache,
    belady_hits,
    lfu_hits,
    lru_hits,
    make_cache,
)

# The reference string of Silberschatz, Galvin & Gagne, "Operating System Concepts", 9th ed.,
# section 9.4: with 3 frames, optimal (Belady) has 9 faults and LRU 12.
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def misses(hits):
    return sum(not h for h in hits)


def test_textbook_faults():
    assert misses(belady_hits(TEXTBOOK, 3)) == 9
    assert misses(lru_hits(TEXTBOOK, 3)) == 12


def test_lru_hand_case():
    # cache 2: 1 m, 2 m, 1 h (1 now most recent), 3 m evicts 2, 2 m evicts 1, 3 h, 1 m evicts 2
    assert lru_hits([1, 2, 1, 3, 2, 3, 1], 2) == [False, False, True, False, False, True, False]


def test_lru_hit_refreshes_recency():
    # FIFO would evict 1 at the request of 3; LRU evicts 2, since 1 was used after 2
    assert lru_hits([1, 2, 1, 3, 1], 2) == [False, False, True, False, True]


def test_lfu_hand_case_and_history():
    # cache 2: 1 m, 1 h, 2 m, 3 m (evicts 2: count 1 < 2), 2 m (evicts 3: counts 2:2 vs 3:1),
    # 3 m (evicts 3? no: cached {1, 2}, counts 1:2, 2:2 -> tie -> least recently used is 1)
    trace = [1, 1, 2, 3, 2, 3]
    assert lfu_hits(trace, 2) == [False, True, False, False, False, False]
    cache = make_cache("lfu", 2)
    for key in trace:
        cache.request(key)
    assert cache.contents == {2, 3}
    assert cache.counts == {1: 2, 2: 2, 3: 2}  # counts survive eviction


def test_belady_hand_case():
    # cache 2: 1 m, 2 m, 3 m: next uses 1 -> 4, 2 -> 5: evict 2; 1 h, 2 m: evict 3 (never again)
    assert belady_hits([1, 2, 3, 1, 2], 2) == [False, False, False, True, False]


@pytest.mark.parametrize("fn", [lru_hits, lfu_hits, belady_hits])
def test_edge_cases(fn):
    assert fn([], 3) == []
    assert fn([4, 4, 4], 0) == [False, False, False]
    assert fn([4, 4, 4], 1) == [False, True, True]
    assert fn([0, 1, 2, 0, 1, 2], 3) == [False] * 3 + [True] * 3  # everything fits


def _lru_loop(trace, n):
    """An independent LRU: a list ordered by last use."""
    order, out = [], []
    for key in trace:
        out.append(key in order)
        if key in order:
            order.remove(key)
        elif n and len(order) == n:
            order.pop(0)
        if n:
            order.append(key)
    return out


def _min_misses_brute(trace, n):
    """The fewest misses any demand-paging policy can get: search every eviction choice."""
    states = {frozenset(): 0}  # cache content -> fewest misses to reach it
    for key in trace:
        nxt: dict[frozenset, int] = {}
        for cached, m in states.items():
            if key in cached:
                options = [(cached, m)]
            elif len(cached) < n:
                options = [(cached | {key}, m + 1)]
            else:
                options = [((cached - {v}) | {key}, m + 1) for v in cached]
            for state, mm in options:
                if mm < nxt.get(state, 1 << 30):
                    nxt[state] = mm
        states = nxt
    return min(states.values())


def test_random_traces_belady_is_the_ceiling():
    rng = random.Random(0)
    for _ in range(60):
        n_keys, n = rng.randint(1, 7), rng.randint(0, 4)
        trace = [rng.randrange(n_keys) for _ in range(rng.randint(0, 14))]
        best = belady_hits(trace, n)
        assert lru_hits(trace, n) == _lru_loop(trace, n)
        for fn in (lru_hits, lfu_hits):
            assert sum(fn(trace, n)) <= sum(best)
        if n:
            assert misses(best) == _min_misses_brute(trace, n)


def test_lru_matches_ordered_dict_on_long_trace():
    rng = random.Random(1)
    trace = [min(int(rng.expovariate(0.2)), 40) for _ in range(2000)]
    od: OrderedDict[int, None] = OrderedDict()
    expected = []
    for key in trace:
        expected.append(key in od)
        if key in od:
            od.move_to_end(key)
        else:
            if len(od) == 5:
                od.popitem(last=False)
            od[key] = None
    assert lru_hits(trace, 5) == expected


def test_cache_objects_report_evictions():
    cache = LRUCache(1)
    assert cache.request(3) is False and cache.inserted == [3] and cache.evicted == []
    assert cache.request(5) is False and cache.evicted == [3] and cache.contents == {5}
    assert cache.request(5) is True and cache.evicted == [] and cache.inserted == []


def test_belady_refuses_a_different_order():
    cache = BeladyCache([1, 2], 1)
    cache.request(1)
    with pytest.raises(ValueError, match="trace"):
        cache.request(3)


@pytest.mark.parametrize("fn", [lru_hits, lfu_hits, belady_hits])
def test_bad_input(fn):
    with pytest.raises(TypeError, match="cache_size"):
        fn([1, 2], 1.5)
    with pytest.raises(ValueError, match="cache_size"):
        fn([1, 2], -1)
    with pytest.raises(TypeError, match="trace"):
        fn("abc", 1)
    with pytest.raises(TypeError, match=r"trace\[1\]"):
        fn([1, 2.0], 1)
    with pytest.raises(ValueError, match=r"trace\[0\]"):
        fn([-1], 1)
    with pytest.raises(ValueError, match="policy"):
        make_cache("fifo", 2)
