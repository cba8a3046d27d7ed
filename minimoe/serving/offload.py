"""Expert offloading, for real: the tiny LM with its experts on disk and a cache of N in memory.

A model whose experts do not fit in accelerator memory keeps the rest of its weights (attention,
embeddings, routers, norms) resident, and the experts in a slower tier (host RAM, or disk),
loading each into a cache of N experts when the router asks for it (MoE-Infinity, arXiv
2401.14361; Eliseev & Mazur, "Fast Inference of Mixture-of-Experts Language Models with
Offloading", arXiv 2312.17238, run Mixtral this way with an LRU cache per layer).

`OffloadedLM` does this with the tiny LM on a CPU: the slow tier is a folder with one
`torch.save` file per (MoE layer, expert); the fast tier is a dict of loaded tensors whose keys
follow a cache policy (`minimoe.serving.cache`, `minimoe.serving.prefetch`). The model copy it
runs holds no expert weights at all (each MoE layer's stacked expert tensors are replaced by
empty ones): every expert the router picks must come from the cache or from disk.

Each MoE layer keeps its router, gating and capacity code; only its experts function is
replaced. For each token and each of its K slots, in the router's order, the runtime requests
the key l * E + e from the policy, takes the expert from the loaded dict or reads its file, and
applies it; the weighted outputs are summed in expert order, as `loop_moe` does, so with one
token per call the output is bit for bit the resident model's. The runtime counts a hit when the
key is in its loaded dict (what it has in memory, not what the policy says), and the bytes of
the tensors it reads from disk.

Generation runs the prompt one byte at a time (`generate(..., prefill="token")`), so the
requests arrive in `flatten_trace` order and the simulator, replaying the trace with a fresh
policy, must predict every hit and every load. Belady's policy needs the future: a first pass
with the resident model records the trace, the second pass replays it (same seed, same text).

Left out: transfers overlapped with compute (loads are synchronous), batching several requests,
quantised experts, pinned memory, and a GPU: on a CPU the "fast" and "slow" tiers are RAM and
the page cache, so the measured time shows the bookkeeping, not a PCIe link (the simulator's
bandwidths model the link).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from minimoe.experts import ExpertParams, ffn
from minimoe.lm.model import TinyLM
from minimoe.serving.cache import ExpertCache
from minimoe.serving.generate import GenerationResult, generate

__all__ = ["ExpertStore", "OffloadedLM"]


class ExpertStore:
    """One file per (MoE layer, expert) in `directory`, written from a model's MoE layers.

    Args:
        model: the `TinyLM` whose experts to write.
        directory: where the files go (created).

    Attributes:
        bytes_read: tensor bytes read by `load` so far; loads: files read so far.
        expert_bytes: the tensor bytes of one expert.
    """

    def __init__(self, model: TinyLM, directory: str | Path) -> None:
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n_experts = model.cfg.n_experts
        self.activation = model.cfg.activation
        self.bytes_read = 0
        self.loads = 0
        for layer, moe in enumerate(model.moe_layers):
            p = moe.experts.params
            for e in range(self.n_experts):
                tensors = {"w1_FD": p.w1_EFD[e], "w2_DF": p.w2_EDF[e]}
                if p.w3_EFD is not None:
                    tensors["w3_FD"] = p.w3_EFD[e]
                torch.save({k: t.detach().clone() for k, t in tensors.items()}, self.path(layer, e))
        self.expert_bytes = (
            sum(t.numel() * t.element_size() for t in self._read(0, 0).values())
            if model.moe_layers
            else 0
        )

    def path(self, layer: int, expert: int) -> Path:
        return self.directory / f"layer{layer:02d}_expert{expert:03d}.pt"

    def _read(self, layer: int, expert: int) -> dict[str, torch.Tensor]:
        return torch.load(self.path(layer, expert), map_location="cpu", weights_only=True)

    def load(self, key: int) -> dict[str, torch.Tensor]:
        """Read expert `key` = layer * E + expert from disk, counting its bytes."""
        layer, expert = divmod(key, self.n_experts)
        tensors = self._read(layer, expert)
        self.bytes_read += sum(t.numel() * t.element_size() for t in tensors.values())
        self.loads += 1
        return tensors


class OffloadedLM:
    """A `TinyLM` served with its experts on disk and N of them cached in memory.

    Args:
        model: the trained `TinyLM` (not modified: the runtime runs a copy without experts).
        directory: where the experts' files are written.
        policy: a fresh `ExpertCache` (see `minimoe.serving.simulate.build_policy`).

    Attributes:
        hits: per expert request, whether it was in memory (measured), in request order.
        requests: the keys requested, in order.
        store: the `ExpertStore` (bytes_read, loads).
    """

    def __init__(self, model: TinyLM, directory: str | Path, policy: ExpertCache) -> None:
        if not isinstance(policy, ExpertCache):
            raise TypeError(f"policy must be an ExpertCache, got {type(policy).__name__}")
        if not model.moe_layers:
            raise ValueError("the model has no MoE layer: nothing to offload")
        self.store = ExpertStore(model, directory)
        self.policy = policy
        self.model = copy.deepcopy(model).eval()
        self.n_experts = model.cfg.n_experts
        self.loaded: dict[int, dict[str, torch.Tensor]] = {}
        self.hits: list[bool] = []
        self.requests: list[int] = []
        for layer, moe in enumerate(self.model.moe_layers):
            cfg = moe.cfg
            if cfg.capacity_formula != "dropless":
                raise ValueError("the offloaded runtime serves dropless MoE layers only")
            empty = nn.Parameter(
                torch.empty(0, dtype=moe.experts.w1_EFD.dtype), requires_grad=False
            )
            moe.experts.w1_EFD = empty
            moe.experts.w2_EDF = empty
            if moe.experts.w3_EFD is not None:
                moe.experts.w3_EFD = empty
            moe.experts_fn = self._experts_fn(layer)

    def _fetch(self, key: int) -> dict[str, torch.Tensor]:
        """Serve one request: measure the hit, follow the policy, return the expert's weights."""
        hit = key in self.loaded
        self.hits.append(hit)
        self.requests.append(key)
        self.policy.request(key)
        weights = self.loaded[key] if hit else self.store.load(key)
        for gone in [k for k in self.loaded if k not in self.policy.contents]:
            del self.loaded[gone]
        for new in self.policy.contents - self.loaded.keys():
            self.loaded[new] = weights if new == key else self.store.load(new)
        return weights

    def _experts_fn(self, layer: int):
        E = self.n_experts

        def offloaded_experts(x_TD, expert_TK, gate_TK, params: ExpertParams, keep_TK=None):
            y_TD = torch.zeros_like(x_TD)
            ids_TK = expert_TK.tolist()
            for t, experts in enumerate(ids_TK):
                outputs = {}  # expert -> its weighted output, in the router's order of requests
                for k, e in enumerate(experts):
                    if keep_TK is not None and not bool(keep_TK[t, k]):
                        continue
                    w = self._fetch(layer * E + e)
                    h_1D = ffn(
                        x_TD[t : t + 1], w["w1_FD"], w["w2_DF"], w.get("w3_FD"), params.activation
                    )
                    outputs[e] = h_1D * gate_TK[t, k].to(h_1D.dtype)
                for e in sorted(outputs):  # summed in expert order, as loop_moe does
                    y_TD[t : t + 1] += outputs[e]
            return y_TD

        return offloaded_experts

    def generate(self, prompt: bytes, n_new: int, **kwargs) -> GenerationResult:
        """`generate` with the offloaded model, the prompt fed one byte at a time."""
        if "prefill" in kwargs:
            raise ValueError("the offloaded runtime always feeds the prompt one byte at a time")
        return generate(self.model, prompt, n_new, prefill="token", **kwargs)

    @property
    def hit_rate(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0

    @property
    def resident_expert_params(self) -> int:
        """Expert weights the runtime's model holds itself (0: all come from the cache)."""
        return sum(p.numel() for m in self.model.moe_layers for p in m.experts.parameters())


def policy_table(
    model: TinyLM,
    directory: str | Path,
    prompt: bytes,
    n_new: int,
    *,
    policies: tuple[str, ...] = ("lru", "lfu", "prefetch", "belady"),
    cache_sizes: tuple[int, ...] = (2, 4, 8, 12),
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict], GenerationResult]:
    """Serve the same generation with every (policy, cache size) and compare with the simulator.

    A first pass with the resident model (every expert in memory, the same byte-at-a-time
    schedule) records the text and the trace; each offloaded run must give the same text, and
    the simulator replaying that trace must give the same hits and bytes.

    Returns:
        (rows, resident): one dict per (policy, cache size) with policy, cache_experts,
        total_experts, requests, hit_rate_measured, hit_rate_simulated, hits_match (every
        request's hit/miss equal), loads, bytes_moved, bytes_moved_simulated, seconds,
        tokens_per_s, same_text_as_resident; and the resident pass's `GenerationResult`.
    """
    from tqdm.auto import tqdm

    from minimoe.serving.simulate import build_policy, simulate

    resident = generate(model, prompt, n_new, temperature=temperature, seed=seed, prefill="token")
    trace = resident.trace
    if trace is None:
        raise ValueError("the model has no MoE layer: nothing to offload")
    total = trace.n_layers * trace.n_experts
    rows = []
    runs = [(p, n) for p in policies for n in cache_sizes]
    for policy, n in tqdm(runs, desc="offloaded runs", disable=not progress):
        runtime = OffloadedLM(
            model, Path(directory) / f"{policy}_{n}", build_policy(policy, n, trace)
        )
        out = runtime.generate(prompt, n_new, temperature=temperature, seed=seed)
        sim = simulate(trace, policy, n, expert_bytes=runtime.store.expert_bytes)
        rows.append(
            {
                "policy": policy,
                "cache_experts": n,
                "total_experts": total,
                "requests": len(runtime.hits),
                "hit_rate_measured": runtime.hit_rate,
                "hit_rate_simulated": sim.hit_rate,
                "hits_match": runtime.hits == sim.hits,
                "loads": runtime.store.loads,
                "bytes_moved": runtime.store.bytes_read,
                "bytes_moved_simulated": sim.bytes_moved,
                "seconds": out.seconds,
                "tokens_per_s": out.tokens_per_s,
                "same_text_as_resident": out.new == resident.new,
            }
        )
    return rows, resident
