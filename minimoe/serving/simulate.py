"""The expert-cache simulator: replay a routing trace against a policy, count hits and bytes, and
turn the bytes into time with a stated bandwidth.

The simulator drives the same cache objects as the offloaded runtime (`minimoe.serving.offload`)
with the keys in the same order (`flatten_trace`), so on the tiny LM it predicts the runtime's
hits, misses and loads exactly; what it cannot predict is the runtime's wall time, which it
estimates as bytes moved / bandwidth (transfers not overlapped with compute: an upper bound on
the stall for a runtime that overlaps them).

Link bandwidths (`LINKS`, bytes per second, one direction, theoretical):
- PCIe 4.0 x16: 16 GT/s per lane, 128b/130b encoding: 16 * 16e9 * 128/130 / 8 = 31.5 GB/s
  (PCI-SIG, PCI Express Base Specification 4.0); measured host-to-device copies reach ~25 GB/s.
- PCIe 5.0 x16: 32 GT/s per lane: 63.0 GB/s (PCI Express Base Specification 5.0).
- NVMe SSD, PCIe 4.0 x4: 7.0 GB/s sequential read (a fast consumer drive's datasheet figure,
  e.g. Samsung 990 PRO: 7,450 MB/s; the x4 link caps it at 7.9 GB/s).
- HBM3 on an H100 SXM: 3.35 TB/s (NVIDIA H100 datasheet): what a resident expert costs to read.

Synthetic traces for models one cannot run here: `random_trace` (independent uniform routing,
the assumption of `expected_experts_touched`) and `sticky_trace` (routing locality: each token
keeps each of its previous token's experts with probability p). `repeat_rate` measures locality
on any trace the way the Mixtral paper does (Jiang et al. 2024, arXiv 2401.04088v1, section 5,
Table 5: the share of consecutive tokens whose expert sets share an expert, its "first or second
choice" column for K = 2); `expected_repeat_rate` is that share for a sticky trace, and
`fit_repeat` inverts it, turning a measured rate into the p that reproduces it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from minimoe.serving.cache import ExpertCache, make_cache
from minimoe.serving.prefetch import PrefetchCache
from minimoe.serving.trace import RoutingTrace, flatten_trace
from minimoe.validate import check_int, check_real

__all__ = [
    "LINKS",
    "POLICIES",
    "SimResult",
    "build_policy",
    "expected_repeat_rate",
    "fit_repeat",
    "random_trace",
    "repeat_rate",
    "simulate",
    "sticky_trace",
]

LINKS: dict[str, float] = {
    "PCIe 4.0 x16": 16 * 16e9 * 128 / 130 / 8,
    "PCIe 5.0 x16": 16 * 32e9 * 128 / 130 / 8,
    "NVMe (PCIe 4.0 x4)": 7.0e9,
    "HBM3 (H100 SXM)": 3.35e12,
}
POLICIES: tuple[str, ...] = ("lru", "lfu", "prefetch", "belady")


def build_policy(
    policy: str, cache_size: int, trace: RoutingTrace, *, n_prefetch: int | None = None
) -> ExpertCache:
    """A fresh cache of `policy` (one of `POLICIES`) for the model the trace comes from; Belady
    reads the trace's keys as its known future."""
    if not isinstance(trace, RoutingTrace):
        raise TypeError(f"trace must be a RoutingTrace, got {type(trace).__name__}")
    if policy == "prefetch":
        return PrefetchCache(
            cache_size, trace.n_experts, trace.n_layers, trace.top_k, n_prefetch=n_prefetch
        )
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return make_cache(policy, cache_size, flatten_trace(trace) if policy == "belady" else None)


@dataclass
class SimResult:
    """One replay.

    Attributes:
        policy, cache_size: what was replayed.
        hits: one bool per request, in `flatten_trace` order.
        loads: experts loaded (misses plus prefetches).
        bytes_moved: loads * expert_bytes.
        seconds: bytes_moved / bandwidth (None without a bandwidth).
    """

    policy: str
    cache_size: int
    hits: list[bool]
    loads: int
    bytes_moved: float
    seconds: float | None

    @property
    def hit_rate(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0

    @property
    def misses(self) -> int:
        return len(self.hits) - sum(self.hits)


def simulate(
    trace: RoutingTrace,
    policy: str,
    cache_size: int,
    *,
    expert_bytes: float = 1.0,
    bandwidth: float | None = None,
    n_prefetch: int | None = None,
) -> SimResult:
    """Replay `trace` against `policy` with room for `cache_size` experts.

    Args:
        trace: a `RoutingTrace` (recorded by `generate`, or `random_trace`).
        policy: "lru", "lfu", "prefetch" or "belady".
        cache_size: N >= 0 experts.
        expert_bytes: bytes of one expert (the unit of bytes_moved).
        bandwidth: bytes per second of the link experts come over (e.g. `LINKS[...]`).
        n_prefetch: experts prefetched per layer (prefetch policy only; default K).

    Returns:
        A `SimResult`.
    """
    cache_size = check_int("cache_size", cache_size, low=0)
    expert_bytes = check_real("expert_bytes", expert_bytes, low=0.0)
    if bandwidth is not None:
        bandwidth = check_real("bandwidth", bandwidth, low=0.0, low_open=True)
    cache = build_policy(policy, cache_size, trace, n_prefetch=n_prefetch)
    hits, loads = [], 0
    for key in flatten_trace(trace):
        hits.append(cache.request(key))
        loads += cache.loads
    moved = loads * expert_bytes
    seconds = None if bandwidth is None else moved / bandwidth
    return SimResult(policy, cache_size, hits, loads, moved, seconds)


def random_trace(
    n_tokens: int, n_layers: int, n_experts: int, top_k: int, *, seed: int = 0
) -> RoutingTrace:
    """A trace of independent, uniform routing: each (token, layer) picks K distinct experts at
    random. The assumption of `expected_experts_touched`; real routers are correlated across
    tokens (Mixtral, arXiv 2401.04088, section 5), which helps caches."""
    import torch

    n_tokens = check_int("n_tokens", n_tokens, low=0)
    trace = RoutingTrace(n_experts, n_layers, top_k)
    rng = random.Random(seed)
    for _ in range(n_tokens):
        rows = [rng.sample(range(n_experts), top_k) for _ in range(n_layers)]
        trace.append(torch.tensor(rows, dtype=torch.int64))
    return trace


def sticky_trace(
    n_tokens: int,
    n_layers: int,
    n_experts: int,
    top_k: int,
    *,
    repeat: float = 0.0,
    seed: int = 0,
) -> RoutingTrace:
    """A trace with routing locality: in every MoE layer, each token keeps each of the previous
    token's K experts, independently, with probability `repeat`, in the same slot; the slots
    left over are drawn uniformly, without duplicates, from the experts not kept (a dropped
    expert may be drawn again, so `repeat = 0` is exactly `random_trace`, same seed, same trace).

    Real routers repeat experts across consecutive tokens more than chance (Mixtral, arXiv
    2401.04088v1, section 5, Table 5); `fit_repeat` turns such a measured rate into `repeat`.
    The first token, and every layer independently, draw as `random_trace` does.

    Args:
        n_tokens: T >= 0.
        n_layers, n_experts, top_k: L, E and K of the model.
        repeat: p in [0, 1], the probability of keeping each previous expert.
        seed: of the generator.
    """
    import torch

    n_tokens = check_int("n_tokens", n_tokens, low=0)
    repeat = check_real("repeat", repeat, low=0.0, high=1.0)
    trace = RoutingTrace(n_experts, n_layers, top_k)
    rng = random.Random(seed)
    previous: list[list[int]] | None = None
    for _ in range(n_tokens):
        rows = []
        for layer in range(n_layers):
            if previous is None or repeat == 0.0:  # the draws of random_trace, one for one
                rows.append(rng.sample(range(n_experts), top_k))
                continue
            row = [e if rng.random() < repeat else -1 for e in previous[layer]]
            kept = {e for e in row if e >= 0}
            fresh = iter(rng.sample([e for e in range(n_experts) if e not in kept],
                                    top_k - len(kept)))  # fmt: skip
            rows.append([e if e >= 0 else next(fresh) for e in row])
        trace.append(torch.tensor(rows, dtype=torch.int64))
        previous = rows
    return trace


def repeat_rate(trace: RoutingTrace, *, per_layer: bool = False):
    """The share of consecutive token pairs whose K experts in a layer share at least one.

    For K = 2 this is the "first or second choice" column of the Mixtral paper's Table 5
    (arXiv 2401.04088v1, section 5): independent uniform routing gives
    1 - C(E-K, K) / C(E, K) (46 % for E = 8, K = 2), Mixtral measured 45-50 % at layer 0,
    62-67 % at layer 15 and 45-54 % at layer 31.

    Args:
        trace: a `RoutingTrace` of at least 2 tokens.
        per_layer: return one rate per MoE layer instead of their mean.

    Returns:
        A float in [0, 1], or a list of L of them.
    """
    if not isinstance(trace, RoutingTrace):
        raise TypeError(f"trace must be a RoutingTrace, got {type(trace).__name__}")
    if len(trace) < 2:
        raise ValueError(f"the trace needs at least 2 tokens to compare, got {len(trace)}")
    expert_TLK = trace.expert_TLK
    # shared_TL[t, l]: token t+1 chose, in layer l, an expert that token t chose too
    same_TLKK = expert_TLK[1:, :, :, None] == expert_TLK[:-1, :, None, :]
    shared_TL = same_TLKK.flatten(2).any(-1).float()
    rates_L = shared_TL.mean(0).tolist()
    return rates_L if per_layer else sum(rates_L) / len(rates_L)


def _disjoint_chance(n_experts: int, top_k: int) -> float:
    """C(E-K, K) / C(E, K): the chance that K fresh uniform experts avoid K given ones."""
    return math.comb(n_experts - top_k, top_k) / math.comb(n_experts, top_k)


def expected_repeat_rate(n_experts: int, top_k: int, repeat: float) -> float:
    """`repeat_rate`'s expected value on a `sticky_trace`: 1 - (1-p)^K C(E-K, K) / C(E, K).

    Two consecutive tokens share no expert only if none was kept ((1-p)^K) and the K fresh
    ones, drawn from all E, miss the previous K."""
    E = check_int("n_experts", n_experts, low=1)
    K = check_int("top_k", top_k, low=1, high=E)
    p = check_real("repeat", repeat, low=0.0, high=1.0)
    return 1.0 - (1.0 - p) ** K * _disjoint_chance(E, K)


def fit_repeat(n_experts: int, top_k: int, rate: float) -> float:
    """The `repeat` whose sticky trace has `repeat_rate` = `rate` (the inverse of
    `expected_repeat_rate`); a rate at or below chance gives 0 (the model cannot repeat less
    than independent routing does)."""
    E = check_int("n_experts", n_experts, low=1)
    K = check_int("top_k", top_k, low=1, high=E)
    rate = check_real("rate", rate, low=0.0, high=1.0)
    chance = _disjoint_chance(E, K)
    if chance == 0.0:
        raise ValueError(
            f"with E = {E} and K = {K} every pair of tokens shares an expert (2K > E): "
            "the repeat rate says nothing about p"
        )
    return 1.0 - min(1.0, (1.0 - rate) / chance) ** (1.0 / K)
