"""Expert caches: which experts stay in fast memory, and which one leaves when a new one comes.

A serving runtime whose experts do not all fit in GPU memory keeps N of them in a cache and loads
the others on demand. Each request is one expert key (`layer * E + expert`, see
`minimoe.serving.trace`); it is a hit when the key is cached, a miss when it must be loaded, and
on a miss with a full cache some key is evicted. The policies:

- LRU: evict the least recently *used* key (a hit refreshes a key's recency).
- LFU: evict the least frequently used key; the counts cover the whole trace so far, including
  requests made while the key was evicted (a "perfect" LFU rather than the in-cache variant: an
  expert that was popular before it was pushed out comes back with its history). Ties go to the
  least recently used key. A new key is counted before the eviction, but is never its own victim.
- Belady's MIN (Belady 1966, "A study of replacement algorithms for a virtual-storage computer",
  IBM Systems Journal 5(2)): evict the key whose next request is farthest in the future. It needs
  the whole trace in advance, so it is a ceiling no online policy can beat (for a cache that
  loads only on a miss), not a policy a server can run on live traffic.

Every policy is an object with one method, `request(key) -> hit`, so the offloaded runtime
(`minimoe.serving.offload`) and the simulator (`minimoe.serving.simulate`) drive the very same
object and cannot disagree about its decisions. `lru_hits`, `lfu_hits` and `belady_hits` replay a
whole trace and return one bool per request.

Left out: admission policies (a key that is not cached on a miss), pinning, size-aware caches
(all experts of one model have the same size, so a count of experts is the capacity).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from minimoe.validate import check_int

__all__ = [
    "BeladyCache",
    "ExpertCache",
    "LFUCache",
    "LRUCache",
    "belady_hits",
    "lfu_hits",
    "lru_hits",
    "make_cache",
]


def _check_trace(trace: Sequence[int]) -> list[int]:
    if isinstance(trace, (str, bytes)) or not isinstance(trace, Sequence):
        raise TypeError(f"trace must be a sequence of ints, got {type(trace).__name__}")
    return [check_int(f"trace[{i}]", key, low=0) for i, key in enumerate(trace)]


class ExpertCache:
    """The common part of the policies: the cached keys, the last eviction, a hit counter.

    Args:
        cache_size: N, the most keys cached at once (0: nothing is kept, every request misses).

    Attributes:
        contents: the cached keys (a set; read it, do not change it).
        evicted: the keys the last `request` evicted (empty after a hit or a free-slot miss).
        inserted: the keys the last `request` brought in (the requested key on a miss, and
            any prefetched ones).
        prefetched: the keys the last `request` loaded ahead of their use (prefetch policies).
    """

    name = "base"

    def __init__(self, cache_size: int) -> None:
        self.cache_size = check_int("cache_size", cache_size, low=0)
        self.contents: set[int] = set()
        self.evicted: list[int] = []
        self.inserted: list[int] = []
        self.prefetched: list[int] = []
        self.last_hit, self._last_key, self._before = False, -1, frozenset()
        self.position = 0  # requests served so far

    def request(self, key: int) -> bool:
        """Serve one request: True on a hit; on a miss the key is inserted (evicting if full)."""
        key = check_int("key", key, low=0)
        self.evicted, self.inserted, self.prefetched = [], [], []
        hit = key in self.contents
        self.last_hit, self._last_key, self._before = hit, key, frozenset(self.contents)
        self._record(key, hit)
        if not hit and self.cache_size > 0:
            self._insert(key)
        self.position += 1
        return hit

    @property
    def loads(self) -> int:
        """Experts the last request had to load: the requested one on a miss (even with no room
        to keep it), plus the keys cached now that were not before it (prefetched ones; a key
        evicted and brought back within the same request never left memory)."""
        brought_in = self.contents - self._before - {self._last_key}
        return len(brought_in) + (0 if self.last_hit else 1)

    def _insert(self, key: int) -> None:
        """Put a key in, evicting the policy's victim first when the cache is full."""
        if len(self.contents) >= self.cache_size:
            victim = self._victim(key)
            self.contents.remove(victim)
            self._forget(victim)
            self.evicted.append(victim)
        self.contents.add(key)
        self._admit(key)
        self.inserted.append(key)

    # the hooks each policy fills in
    def _record(self, key: int, hit: bool) -> None:
        """Update the policy's bookkeeping for a request (before any eviction)."""

    def _victim(self, key: int) -> int:
        raise NotImplementedError

    def _admit(self, key: int) -> None:
        """Bookkeeping for a key that has just entered the cache."""

    def _forget(self, key: int) -> None:
        """Bookkeeping for a key that has just left the cache."""


class LRUCache(ExpertCache):
    """Least recently used: the victim is the cached key requested longest ago."""

    name = "lru"

    def __init__(self, cache_size: int) -> None:
        super().__init__(cache_size)
        self._order: OrderedDict[int, None] = OrderedDict()  # least recent first

    def _record(self, key: int, hit: bool) -> None:
        if hit:
            self._order.move_to_end(key)

    def _victim(self, key: int) -> int:
        return next(iter(self._order))

    def _admit(self, key: int) -> None:
        self._order[key] = None

    def _forget(self, key: int) -> None:
        del self._order[key]

    def touch(self, key: int) -> None:
        """Make a cached key the most recently used (a prefetch that found it already there)."""
        if key in self._order:
            self._order.move_to_end(key)


class LFUCache(ExpertCache):
    """Least frequently used over the whole trace so far; ties to the least recently used."""

    name = "lfu"

    def __init__(self, cache_size: int) -> None:
        super().__init__(cache_size)
        self.counts: dict[int, int] = {}
        self._last_use: dict[int, int] = {}

    def _record(self, key: int, hit: bool) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        self._last_use[key] = self.position

    def _victim(self, key: int) -> int:
        return min(self.contents, key=lambda k: (self.counts[k], self._last_use[k]))


class BeladyCache(ExpertCache):
    """Belady's MIN from the known trace: evict the key requested again farthest in the future.

    Args:
        trace: every request, in order, that this cache will serve (recorded in a first pass).
        cache_size: N.

    The requests must then arrive exactly in the trace's order; any other key raises ValueError,
    since the "future" the policy looks at would be wrong.

    Ties: two cached keys can tie only when neither is ever requested again (two keys requested
    later have different next positions). Which of those is evicted does not change a single hit:
    neither will be requested, so the one kept never serves a hit, and at every later eviction a
    never-again key is still (one of) the farthest, so it goes first whichever it is. The choice
    here is the smallest key, for a deterministic cache content.
    """

    name = "belady"

    def __init__(self, trace: Sequence[int], cache_size: int) -> None:
        super().__init__(cache_size)
        self.trace = _check_trace(trace)
        # next_use[i]: the position of the next request of trace[i] after i (inf if none)
        self.next_use = [math.inf] * len(self.trace)
        seen: dict[int, int] = {}
        for i in range(len(self.trace) - 1, -1, -1):
            self.next_use[i] = seen.get(self.trace[i], math.inf)
            seen[self.trace[i]] = i
        self._next_of: dict[int, float] = {}  # cached key -> its next request position

    def _record(self, key: int, hit: bool) -> None:
        if self.position >= len(self.trace) or self.trace[self.position] != key:
            expected = self.trace[self.position] if self.position < len(self.trace) else None
            raise ValueError(
                f"request {self.position} is key {key}, but the trace says {expected}: "
                "Belady's policy must see the requests of its trace, in order"
            )
        self._next_of[key] = self.next_use[self.position]

    def _victim(self, key: int) -> int:
        return max(sorted(self.contents), key=lambda k: self._next_of[k])

    def _forget(self, key: int) -> None:
        del self._next_of[key]


def make_cache(policy: str, cache_size: int, trace: Sequence[int] | None = None) -> ExpertCache:
    """A fresh cache of the named policy ("lru", "lfu" or "belady", which needs the `trace`)."""
    if policy == "lru":
        return LRUCache(cache_size)
    if policy == "lfu":
        return LFUCache(cache_size)
    if policy == "belady":
        if trace is None:
            raise ValueError("policy='belady' needs the trace it will serve")
        return BeladyCache(trace, cache_size)
    raise ValueError(f"policy must be one of 'lru', 'lfu', 'belady', got {policy!r}")


def _replay(cache: ExpertCache, trace: list[int]) -> list[bool]:
    return [cache.request(key) for key in trace]


def lru_hits(trace: Sequence[int], cache_size: int) -> list[bool]:
    """Replay `trace` through an LRU cache of `cache_size` keys.

    Args:
        trace: the requested keys, in order (ints >= 0).
        cache_size: N >= 0 (0: every request misses).

    Returns:
        One bool per request: True where the key was cached when requested.
    """
    trace = _check_trace(trace)
    return _replay(LRUCache(cache_size), trace)


def lfu_hits(trace: Sequence[int], cache_size: int) -> list[bool]:
    """Replay `trace` through an LFU cache (counts over the whole trace so far, ties to the least
    recently used); same arguments and result as `lru_hits`."""
    trace = _check_trace(trace)
    return _replay(LFUCache(cache_size), trace)


def belady_hits(trace: Sequence[int], cache_size: int) -> list[bool]:
    """Replay `trace` through Belady's optimal cache (it knows the trace in advance); same
    arguments and result as `lru_hits`. No policy that loads only the key requested gets more
    hits on the same trace and cache size."""
    trace = _check_trace(trace)
    return _replay(BeladyCache(trace, cache_size), trace)
