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
3. Routing: the trace is the independent uniform routing of `random_trace` (every token picks
   2 of 8 experts per layer at random). Real routers repeat themselves across consecutive
   tokens more than chance (Mixtral, arXiv 2401.04088, section 5), which raises hit rates: the
   projection is pessimistic for LRU-like policies.
4. A miss copies one expert over PCIe 4.0 x16 at its theoretical 31.5 GB/s (measured copies
   reach ~25 GB/s: 25 % slower); copies are not overlapped with compute.
5. Compute: a decode step also reads the resident weights and the two experts per layer from
   the GPU's memory at `gpu_bandwidth` (RTX 4090: 1008 GB/s, NVIDIA's specification); batch 1.

time per token = misses per token x expert bytes / link bandwidth
               + (resident bytes + 2 x 32 experts' bytes) / gpu_bandwidth
"""

from __future__ import annotations

from minimoe.serving.roofline import MoEShape, real_model_shape
from minimoe.serving.simulate import LINKS, random_trace, simulate
from minimoe.validate import check_int, check_real

__all__ = ["RTX_4090_BANDWIDTH", "offload_projection"]

RTX_4090_BANDWIDTH = 1008e9  # bytes/s, NVIDIA GeForce RTX 4090 specifications (GDDR6X)


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
) -> dict:
    """Tokens per second of a model served from a GPU too small for its experts.

    Args:
        shape: the model (default Mixtral-8x7B).
        gpu_memory: bytes of GPU memory.
        context_len: positions of the one sequence's KV cache.
        overhead: bytes set aside for the runtime (CUDA context, activations).
        link_bandwidth: bytes/s of host-to-GPU copies.
        gpu_bandwidth: bytes/s of the GPU's own memory.
        n_tokens: tokens of the simulated (random) trace.
        policies: the cache policies to replay.
        seed: of the random trace.
        weight_bytes: bytes per weight and KV element.

    Returns:
        A dict with the assumptions ("assumptions"), the memory budget ("resident_bytes",
        "kv_bytes", "expert_bytes", "cache_experts", "total_experts") and one row per policy
        ("rows": policy, hit_rate, misses_per_token, transfer_s_per_token, compute_s_per_token,
        tokens_per_s).
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
    n_tokens = check_int("n_tokens", n_tokens, low=1)
    L, E, K = shape.n_moe_layers, shape.n_experts, shape.top_k
    expert_bytes = shape.expert_params * weight_bytes
    resident = (shape.total_params - L * E * shape.expert_params) * weight_bytes
    kv = context_len * shape.kv_per_position * shape.n_layers * weight_bytes
    free = gpu_memory - resident - kv - overhead
    cache_experts = max(0, min(L * E, int(free // expert_bytes)))
    trace = random_trace(n_tokens, L, E, K, seed=seed)
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
            "routing": f"independent uniform, {n_tokens} tokens, seed {seed}",
            "batch": 1,
            "transfers_overlapped": False,
        },
        "resident_bytes": resident,
        "kv_bytes": kv,
        "expert_bytes": expert_bytes,
        "cache_experts": cache_experts,
        "total_experts": L * E,
        "rows": rows,
    }
