"""Routing traces: which experts each generated token asked for, in each MoE layer.

A trace recorded while generating holds, per token t (prompt and generated alike, in order), per
MoE layer l and per slot k, the expert id the router chose: `expert_TLK[t, l, k]`, with the K
experts of a (token, layer) in the router's order (highest gate first).

An expert cache sees a trace as a flat stream of keys `key = l * E + e`, one per (token, layer,
slot), in the order the offloaded runtime requests them: token by token, layer by layer within a
token, k in the router's order within a layer (`flatten_trace`). The runtime and the simulator
both use this order, which is what lets the simulator predict the runtime's hits exactly.

Left out: batched decoding (one sequence at a time), dropped slots (the tiny LM routes dropless).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minimoe.validate import check_int

__all__ = ["RoutingTrace", "experts_touched", "flatten_trace", "trace_keys_TLK"]


@dataclass
class RoutingTrace:
    """The experts chosen per (token, MoE layer, slot) during one generation.

    Args:
        n_experts: E.
        n_layers: the number of MoE layers (L here counts MoE layers only).
        top_k: K.

    Attributes:
        steps: one (L, K) int64 tensor per token, appended in order.
    """

    n_experts: int
    n_layers: int
    top_k: int
    steps: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int("n_experts", self.n_experts, low=1)
        check_int("n_layers", self.n_layers, low=1)
        check_int("top_k", self.top_k, low=1, high=self.n_experts)

    def append(self, expert_LK: torch.Tensor) -> None:
        """Add one token's experts: an (L, K) integer tensor of ids in [0, E)."""
        if not isinstance(expert_LK, torch.Tensor) or expert_LK.dtype not in (
            torch.int32,
            torch.int64,
        ):
            raise TypeError("expert_LK must be an int32/int64 tensor")
        if tuple(expert_LK.shape) != (self.n_layers, self.top_k):
            raise ValueError(
                f"expert_LK must have shape (L, K) = {(self.n_layers, self.top_k)}, "
                f"got {tuple(expert_LK.shape)}"
            )
        if expert_LK.numel() and not (
            0 <= int(expert_LK.min()) and int(expert_LK.max()) < self.n_experts
        ):
            raise ValueError(f"expert ids must be in [0, {self.n_experts})")
        self.steps.append(expert_LK.detach().to("cpu", torch.int64).clone())

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def expert_TLK(self) -> torch.Tensor:
        """All tokens' experts as one (T, L, K) int64 tensor (T = 0 gives an empty one)."""
        if not self.steps:
            return torch.empty(0, self.n_layers, self.top_k, dtype=torch.int64)
        return torch.stack(self.steps)


def trace_keys_TLK(trace: RoutingTrace) -> torch.Tensor:
    """The cache keys l * E + e of every (token, layer, slot): a (T, L, K) int64 tensor."""
    if not isinstance(trace, RoutingTrace):
        raise TypeError(f"trace must be a RoutingTrace, got {type(trace).__name__}")
    layer_L = torch.arange(trace.n_layers)
    return trace.expert_TLK + (layer_L * trace.n_experts)[None, :, None]


def flatten_trace(trace: RoutingTrace) -> list[int]:
    """The keys in the runtime's request order: token by token, layer by layer, k in the
    router's order; key = layer * E + expert."""
    return trace_keys_TLK(trace).reshape(-1).tolist()


def experts_touched(
    trace: RoutingTrace, batch: int, *, mode: str = "random", seed: int = 0
) -> float:
    """The mean number of distinct experts per MoE layer that `batch` tokens of the trace touch.

    Args:
        trace: a `RoutingTrace` with at least `batch` tokens.
        batch: B >= 1.
        mode: "random": batches of B tokens drawn without replacement from the whole trace (a
            decode batch holds B different requests; this keeps the router's real load
            imbalance but not the requests' independence); "consecutive": disjoint windows of B
            consecutive tokens (one request's tokens: correlated routing).
        seed: of the random batches (200 of them).

    Returns:
        The mean over batches and layers, to compare with `expected_experts_touched(E, K, B)`.
    """
    import random

    if not isinstance(trace, RoutingTrace):
        raise TypeError(f"trace must be a RoutingTrace, got {type(trace).__name__}")
    B = check_int("batch", batch, low=1, high=max(1, len(trace)))
    if len(trace) == 0:
        raise ValueError("the trace is empty")
    if mode not in ("random", "consecutive"):
        raise ValueError(f"mode must be 'random' or 'consecutive', got {mode!r}")
    expert_TLK = trace.expert_TLK
    T = expert_TLK.shape[0]
    if mode == "consecutive":
        batches = [list(range(s, s + B)) for s in range(0, T - B + 1, B)]
    else:
        rng = random.Random(seed)
        batches = [rng.sample(range(T), B) for _ in range(200)]
    total = 0
    for rows in batches:
        chosen_BLK = expert_TLK[rows]
        for layer in range(trace.n_layers):
            total += int(torch.unique(chosen_BLK[:, layer]).numel())
    return total / (len(batches) * trace.n_layers)
