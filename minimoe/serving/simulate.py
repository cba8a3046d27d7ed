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
"""

from __future__ import annotations

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
    "random_trace",
    "simulate",
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
