"""Activation-aware prefetching: load the next layer's likely experts before they are asked for.

MoE-Infinity (Xue et al., arXiv 2401.14361, section 4) serves one request at a time from a GPU
too small for the experts. It traces, per request, an Expert Activation Matrix (EAM): how many
of the request's tokens each expert of each layer has served so far. Its observation is that
this request-level activation history predicts what the request will activate next much better
than global popularity does, and it prefetches the experts of the layers ahead in the order of
their predicted activation (it also matches the partial EAM against EAMs of past requests,
which needs many requests; left out here: the tiny LM serves one).

`PrefetchCache` is an LRU cache plus that prediction: after the K requests of a (token, layer),
it predicts the experts of the next MoE layer (the first layer of the next token after the
last) as the `n_prefetch` experts with the highest counts in the request's EAM for that layer,
ties to the lower id, and loads those not cached (as the most recently used; a cached one is
refreshed). Experts never activated are never predicted, so the first token prefetches nothing.

The prediction uses only the keys requested so far, so the simulator replaying the trace makes
exactly the runtime's decisions. A prefetch moves bytes a miss would not (a wrong guess is a
wasted load); with prefetching the hits can exceed Belady's, which bounds policies that load
only on a miss: compare bytes moved as well as hit rates.
"""

from __future__ import annotations

from minimoe.serving.cache import LRUCache
from minimoe.validate import check_int, check_optional_int

__all__ = ["PrefetchCache"]


class PrefetchCache(LRUCache):
    """LRU with activation-aware prefetching of the next layer's experts.

    Args:
        cache_size: N experts kept.
        n_experts, n_layers, top_k: E, the MoE layers L and K of the model (keys are l * E + e,
            requested K per (token, layer), layers in order).
        n_prefetch: experts predicted per layer (default K; at most N, so a prefetch never
            evicts what it has just loaded).

    Attributes:
        counts_LE: the request's expert activation matrix so far (list of lists).
    """

    name = "prefetch"

    def __init__(
        self,
        cache_size: int,
        n_experts: int,
        n_layers: int,
        top_k: int,
        n_prefetch: int | None = None,
    ) -> None:
        super().__init__(cache_size)
        self.n_experts = check_int("n_experts", n_experts, low=1)
        self.n_layers = check_int("n_layers", n_layers, low=1)
        self.top_k = check_int("top_k", top_k, low=1, high=self.n_experts)
        n_prefetch = check_optional_int("n_prefetch", n_prefetch, low=0)
        self.n_prefetch = min(self.top_k if n_prefetch is None else n_prefetch, self.cache_size)
        self.counts_LE = [[0] * self.n_experts for _ in range(self.n_layers)]
        self._in_group = 0

    def predict(self, layer: int) -> list[int]:
        """The keys predicted for `layer`: its most activated experts so far, ties to lower ids."""
        counts_E = self.counts_LE[layer]
        ranked = sorted(
            (e for e in range(self.n_experts) if counts_E[e]), key=lambda e: -counts_E[e]
        )
        return [layer * self.n_experts + e for e in ranked[: self.n_prefetch]]

    def request(self, key: int) -> bool:
        hit = super().request(key)
        layer, expert = divmod(key, self.n_experts)
        if layer >= self.n_layers:
            raise ValueError(
                f"key {key} is past the last layer (L={self.n_layers}, E={self.n_experts})"
            )
        self.counts_LE[layer][expert] += 1
        self._in_group += 1
        if self._in_group == self.top_k:  # the (token, layer) is complete: look ahead
            self._in_group = 0
            for predicted in self.predict((layer + 1) % self.n_layers):
                if predicted in self.contents:
                    self.touch(predicted)
                else:
                    self._insert(predicted)
                    self.prefetched.append(predicted)
        return hit
