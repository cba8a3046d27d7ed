"""Projecting the cache simulator to a real model: Mixtral 8x7B on one 24 GB GPU.

The claim to check (MoE-Infinity, arXiv 2401.14361, as the course's seeds quote it): keeping
experts in host memory and streaming them in lets Mixtral run on a single 24 GB card "with some
patience". How much patience follows from a handful of numbers, every one an assumption stated
here and returned with the result:

1. Weights in bf16 (2 bytes). Mixtral 8x7B: 46.7B parameters, of which the 256 experts (32
   layers x 8) hold 45.1B, 352 MB each; everything else (attention, embeddings, head, routers,
   norms) 1.6B = 3.2 GB, kept on the GPU.
2. The KV cache of one sequence of `context_len` positions stays on the GPU
   (4096 positions: 0.5 GB), plus `overhead` bytes for the CUDA context, activations and
   fragmentation (2 GB assumed). The rest of the 24 GB holds expert slots: the cache size.
3. Routing: `routing="independent"` replays `random_trace` (every token picks 2 of 8 experts
   per layer at random); `routing="sticky"` replays `sticky_trace`, where each token keeps each
   of its previous token's experts with probability `repeat` (p). Real routers repeat experts
   across consecutive tokens more than chance. The Mixtral paper (Jiang et al. 2024, arXiv
   2401.04088v1, section 5, Table 5) measured, on eight subsets of The Pile, how often two
   consecutive tokens share an expert ("first or second choice"; chance is 46 %): 44.9-49.9 %
   at layer 0, 61.6-67.0 % at layer 15, 44.5-53.6 % at layer 31 (`MIXTRAL_REPEATS`, the only
   layers it tabulates). `fit_repeat` turns the mean of each layer into p: 0.02, 0.18 and 0.04.
4. A miss copies one expert over PCIe 4.0 x16 at its theoretical 31.5 GB/s (measured copies
   reach ~25 GB/s: 25 % slower); copies are not overlapped with compute.
5. Compute: a decode step also reads the resident weights and the two experts per layer from
   the GPU's memory at `gpu_bandwidth` (RTX 4090: 1008 GB/s, NVIDIA's specification); batch 1.

time per token = misses per token x expert bytes / link bandwidth
               + (resident bytes + 2 x 32 experts' bytes) / gpu_bandwidth
"""

from __future__ import annotations

from minimoe.serving.roofline import MoEShape
from minimoe.serving.shapes import real_model_shape
from minimoe.serving.simulate import (
    LINKS,
    expected_repeat_rate,
    fit_repeat,
    random_trace,
    repeat_rate,
    simulate,
    sticky_trace,
)
from minimoe.validate import check_int, check_real

__all__ = [
    "MIXTRAL_REPEATS",
    "ROUTINGS",
    "RTX_4090_BANDWIDTH",
    "mixtral_repeat",
    "offload_projection",
]

RTX_4090_BANDWIDTH = 1008e9  # bytes/s, NVIDIA GeForce RTX 4090 specifications (GDDR6X)
ROUTINGS = ("independent", "sticky")

# Mixtral 8x7B, share of consecutive tokens assigned a common expert ("first or second choice"),
# per layer, on ArXiv, DM Mathematics, Github, Gutenberg, PhilPapers, PubMed Abstracts,
# StackExchange and Wikipedia (en): Jiang et al. 2024, arXiv 2401.04088v1, section 5, Table 5.
MIXTRAL_REPEATS: dict[int, tuple[float, ...]] = {
    0: (0.465, 0.449, 0.499, 0.495, 0.469, 0.486, 0.482, 0.498),
    15: (0.623, 0.670, 0.669, 0.631, 0.619, 0.616, 0.646, 0.621),
    31: (0.529, 0.445, 0.492, 0.522, 0.513, 0.518, 0.536, 0.518),
}


def mixtral_repeat(layer: int) -> float:
    """The `sticky_trace` p that reproduces Mixtral's mean repeat rate at `layer` (0, 15 or 31,
    the layers of its Table 5), for E = 8, K = 2."""
    if layer not in MIXTRAL_REPEATS:
        raise ValueError(f"layer must be one of {list(MIXTRAL_REPEATS)}, got {layer!r}")
    rates = MIXTRAL_REPEATS[layer]
    return fit_repeat(8, 2, sum(rates) / len(rates))


def offload_projection(
    shape: MoEShape | None = None,
    *,
    gpu_memory: float = 24e9,
    context_len: int = 4096,
    overhead: float = 2e9,
    link_bandwidth: float = LINKS["PCIe 4.0 x16"],
    gpu_bandwidth: float = RTX_4090_BANDWIDTH,
    n_tokens: int = 200,
    policies: tuple[str, ...] = ("lru", "lfu", "prefetch", "belady"),
    seed: int = 0,
    weight_bytes: float = 2.0,
    routing: str = "independent",
    repeat: float | None = None,
) -> dict:
    """Tokens per second of a model served from a GPU too small for its experts.

    Args:
        shape: the model (default Mixtral-8x7B).
        gpu_memory: bytes of GPU memory.
        context_len: positions of the one sequence's KV cache.
        overhead: bytes set aside for the runtime (CUDA context, activations).
        link_bandwidth: bytes/s of host-to-GPU copies.
        gpu_bandwidth: bytes/s of the GPU's own memory.
        n_tokens: tokens of the simulated trace.
        policies: the cache policies to replay.
        seed: of the trace.
        weight_bytes: bytes per weight and KV element.
        routing: "independent" (`random_trace`) or "sticky" (`sticky_trace`).
        repeat: p, the probability a token keeps each of its previous token's experts (sticky
            routing only, where it is required; e.g. `mixtral_repeat(15)`).

    Returns:
        A dict with the assumptions ("assumptions"), the memory budget ("resident_bytes",
        "kv_bytes", "expert_bytes", "cache_experts", "total_experts"), the trace's locality
        ("repeat": p, "repeat_rate": measured by `repeat_rate`, "repeat_rate_expected") and one
        row per policy ("rows": policy, hit_rate, loads_per_token, transfer_s_per_token,
        compute_s_per_token, tokens_per_s).
    """
    shape = real_model_shape("Mixtral-8x7B") if shape is None else shape
    if not isinstance(shape, MoEShape):
        raise TypeError(f"shape must be a MoEShape, got {type(shape).__name__}")
    for name, value in [
        ("gpu_memory", gpu_memory),
        ("link_bandwidth", link_bandwidth),
        ("gpu_bandwidth", gpu_bandwidth),
        ("weight_bytes", weight_bytes),
    ]:
        check_real(name, value, low=0.0, low_open=True)
    check_real("overhead", overhead, low=0.0)
    context_len = check_int("context_len", context_len, low=0)
    n_tokens = check_int("n_tokens", n_tokens, low=2)
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if routing == "sticky":
        if repeat is None:
            raise ValueError("routing='sticky' needs repeat (p in [0, 1])")
        repeat = check_real("repeat", repeat, low=0.0, high=1.0)
    elif repeat not in (None, 0, 0.0):
        raise ValueError(f"repeat applies to routing='sticky' only, got repeat={repeat!r}")
    p = 0.0 if routing == "independent" else repeat
    L, E, K = shape.n_moe_layers, shape.n_experts, shape.top_k
    expert_bytes = shape.expert_params * weight_bytes
    resident = (shape.total_params - L * E * shape.expert_params) * weight_bytes
    kv = context_len * shape.kv_per_position * shape.n_layers * weight_bytes
    free = gpu_memory - resident - kv - overhead
    cache_experts = max(0, min(L * E, int(free // expert_bytes)))
    if routing == "independent":
        trace = random_trace(n_tokens, L, E, K, seed=seed)
        described = f"independent uniform, {n_tokens} tokens, seed {seed}"
    else:
        trace = sticky_trace(n_tokens, L, E, K, repeat=p, seed=seed)
        described = f"sticky, p = {p:.3f}, {n_tokens} tokens, seed {seed}"
    compute_s = (resident + L * K * expert_bytes) / gpu_bandwidth
    rows = []
    for policy in policies:
        sim = simulate(trace, policy, cache_experts, expert_bytes=expert_bytes)
        loads_per_token = sim.loads / n_tokens
        transfer_s = loads_per_token * expert_bytes / link_bandwidth
        rows.append(
            {
                "policy": policy,
                "hit_rate": sim.hit_rate,
                "loads_per_token": loads_per_token,
                "transfer_s_per_token": transfer_s,
                "compute_s_per_token": compute_s,
                "tokens_per_s": 1.0 / (transfer_s + compute_s),
            }
        )
    return {
        "model": shape.name,
        "assumptions": {
            "weight_bytes": weight_bytes,
            "gpu_memory": gpu_memory,
            "context_len": context_len,
            "overhead": overhead,
            "link_bandwidth": link_bandwidth,
            "gpu_bandwidth": gpu_bandwidth,
            "routing": described,
            "routing_model": routing,
            "repeat": p,
            "batch": 1,
            "transfers_overlapped": False,
        },
        "resident_bytes": resident,
        "kv_bytes": kv,
        "expert_bytes": expert_bytes,
        "cache_experts": cache_experts,
        "total_experts": L * E,
        "repeat": p,
        "repeat_rate": repeat_rate(trace),
        "repeat_rate_expected": expected_repeat_rate(E, K, p),
        "rows": rows,
    }
