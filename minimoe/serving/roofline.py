"""The decode roofline: the bytes a decode step reads, the FLOPs it does, and when batching stops helping.

A decode step runs every sequence of a batch of B forward by one token. It reads each weight it
uses once for the whole batch (from HBM into the cores), and does 2 FLOPs per weight per token.
With B = 1 that is 1 FLOP per byte in bf16: far below a GPU's ridge point (H100 SXM: 989 TFLOP/s
/ 3.35 TB/s ~ 295 FLOP/byte), so decoding is memory-bound and its time is the bytes read divided
by the bandwidth. Batching divides those bytes over B tokens; for a dense model the intensity
grows like B until the step turns compute-bound (Williams, Waterman, Patterson 2009, "Roofline",
CACM 52(4)).

An MoE layer breaks this: the experts a batch reads are the union of the experts its tokens
chose. With independent routing of K experts out of E per token, one expert is missed by all B
tokens with probability (1 - K/E)^B, so the batch touches on average

    E * (1 - (1 - K/E)^B)                                  (`expected_experts_touched`)

experts per layer: K at B = 1, then nearly all E as B grows. The expert bytes grow with B until
every expert is read, so batching helps an MoE model much less than a dense one of the same active
size until the batch is large enough to touch all experts.

A decode step of B sequences with `context_len` cached positions each reads (`decode_step_bytes`):

    weights  = (attention of every layer + dense FFN layers + shared experts + routers + output
                head) + experts_touched * one expert, per MoE layer           x weight_bytes
    kv cache = B * context_len * (KV elements per position per layer) * layers   x kv_bytes

and does (`decode_step_flops`)

    2 * B * (active matmul weights per token) + B * context_len * layers * attn_flops_per_position

Counted as zero: the input embedding lookup (B rows of D), norms, the writes of the new KV
entries and the activations; each is well under 0.1 % of the step for the models here.
Real kernels re-read some weights and are not at peak; the roofline is a bound, not a forecast.

The shapes of real models (`REAL_MODELS`, `real_model_shape`) and of the tiny LM
(`shape_from_lm`) are built in `minimoe.serving.shapes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from minimoe.validate import check_int, check_real

__all__ = [
    "GPUS",
    "GPU",
    "MoEShape",
    "arithmetic_intensity",
    "compute_bound_batch",
    "decode_step_breakdown",
    "decode_step_bytes",
    "decode_step_flops",
    "decode_step_time",
    "expected_experts_touched",
]


def expected_experts_touched(n_experts: int, top_k: int, batch: int) -> float:
    """E * (1 - (1 - K/E)^B): the expected number of distinct experts B tokens touch in one
    layer when each token picks K of E experts uniformly and independently of the others.

    Args:
        n_experts: E >= 1.
        top_k: K in [1, E].
        batch: B >= 0 tokens (0 touches nothing).

    Returns:
        A float in [0, E]: K at B = 1, approaching E as B grows.
    """
    E = check_int("n_experts", n_experts, low=1)
    K = check_int("top_k", top_k, low=1, high=E)
    B = check_int("batch", batch, low=0)
    return E * (1.0 - (1.0 - K / E) ** B)


@dataclass(frozen=True)
class MoEShape:
    """The sizes of a decoder-only MoE model that decide its decode bytes and FLOPs.

    Args:
        name: for tables.
        d_model: D.
        n_layers: L, all blocks.
        n_dense_layers: blocks whose FFN is dense (DeepSeek-V3's first 3; 0 for Mixtral).
        n_experts, top_k: E routed experts per MoE layer, K per token.
        d_ff_expert: F of one routed expert.
        n_shared_experts, d_ff_shared: always-on experts per MoE layer and their F each.
        d_ff_dense: F of a dense block's FFN.
        vocab_size: V.
        attn_params: weights of one block's attention (projections only, no norms).
        kv_per_position: KV-cache elements one position keeps per layer (GQA: 2 * kv_heads *
            head_dim; MLA: kv_lora_rank + rope dim).
        attn_flops_per_position: attention FLOPs per token per cached position per layer
            (scores and weighted sum: 4 * heads * head_dim for multi-head attention).
        tie_embeddings: the output head is the input embedding (counted once).
        ffn_matrices: weight matrices per FFN (3 for SwiGLU, 2 for GELU/ReLU).
    """

    name: str
    d_model: int
    n_layers: int
    n_dense_layers: int
    n_experts: int
    top_k: int
    d_ff_expert: int
    n_shared_experts: int
    d_ff_shared: int
    d_ff_dense: int
    vocab_size: int
    attn_params: int
    kv_per_position: int
    attn_flops_per_position: int
    tie_embeddings: bool = False
    ffn_matrices: int = 3

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_experts", "vocab_size", "ffn_matrices"):
            check_int(name, getattr(self, name), low=1)
        for name in (
            "n_dense_layers",
            "d_ff_expert",
            "n_shared_experts",
            "d_ff_shared",
            "d_ff_dense",
            "attn_params",
            "kv_per_position",
            "attn_flops_per_position",
        ):
            check_int(name, getattr(self, name), low=0)
        check_int("n_dense_layers", self.n_dense_layers, high=self.n_layers)
        check_int("top_k", self.top_k, low=1, high=self.n_experts)

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert."""
        return self.ffn_matrices * self.d_model * self.d_ff_expert

    @property
    def always_read_params(self) -> int:
        """Weights every decode step reads whatever the routing: attention, dense FFNs, shared
        experts, routers and the output head (the input embedding's B rows are not counted)."""
        D = self.d_model
        return (
            self.n_layers * self.attn_params
            + self.n_dense_layers * self.ffn_matrices * D * self.d_ff_dense
            + self.n_moe_layers
            * (
                self.n_shared_experts * self.ffn_matrices * D * self.d_ff_shared
                + self.n_experts * D
            )
            + self.vocab_size * D
        )

    @property
    def total_params(self) -> int:
        """All weights but norms: always-read + every expert + the input embedding if untied."""
        embed = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return (
            self.always_read_params
            + self.n_moe_layers * self.n_experts * self.expert_params
            + embed
        )

    @property
    def active_params(self) -> int:
        """Weights one token uses (the convention of Mixtral's "12.9B active"): total minus the
        E - K routed experts it skips in each MoE layer."""
        return self.total_params - self.n_moe_layers * (self.n_experts - self.top_k) * (
            self.expert_params
        )


def _check_step(shape, batch, context_len, experts_touched, weight_bytes, kv_bytes):
    if not isinstance(shape, MoEShape):
        raise TypeError(f"shape must be a MoEShape, got {type(shape).__name__}")
    B = check_int("batch", batch, low=1)
    S = check_int("context_len", context_len, low=0)
    if experts_touched is None:
        touched = expected_experts_touched(shape.n_experts, shape.top_k, B)
    else:
        touched = check_real("experts_touched", experts_touched)
        low, high = shape.top_k, min(shape.n_experts, B * shape.top_k)
        if not low - 1e-9 <= touched <= high + 1e-9:
            raise ValueError(
                f"experts_touched must be in [K, min(E, B*K)] = [{low}, {high}] for "
                f"B={B}, got {touched}"
            )
    wb = check_real("weight_bytes", weight_bytes, low=0, low_open=True)
    kb = check_real("kv_bytes", kv_bytes, low=0, low_open=True)
    return B, S, touched, wb, kb


def decode_step_breakdown(
    shape: MoEShape,
    batch: int,
    context_len: int,
    *,
    experts_touched: float | None = None,
    weight_bytes: float = 2.0,
    kv_bytes: float = 2.0,
) -> dict[str, float]:
    """The bytes one decode step reads, by kind.

    Args:
        shape: the model's `MoEShape`.
        batch: B >= 1 sequences, one new token each.
        context_len: S >= 0 positions already in each sequence's KV cache.
        experts_touched: distinct routed experts read per MoE layer (default: the independent
            expectation `expected_experts_touched(E, K, B)`; pass a measured mean instead).
        weight_bytes: bytes per weight (2 for bf16).
        kv_bytes: bytes per KV-cache element (2 for bf16).

    Returns:
        {"always": attention, dense FFNs, shared experts, routers and head; "experts": the
        routed experts touched; "kv": the KV cache; "total": their sum}, all in bytes.
    """
    B, S, touched, wb, kb = _check_step(
        shape, batch, context_len, experts_touched, weight_bytes, kv_bytes
    )
    always = shape.always_read_params * wb
    experts = shape.n_moe_layers * touched * shape.expert_params * wb
    kv = B * S * shape.kv_per_position * shape.n_layers * kb
    return {"always": always, "experts": experts, "kv": kv, "total": always + experts + kv}


def decode_step_bytes(
    shape: MoEShape,
    batch: int,
    context_len: int,
    *,
    experts_touched: float | None = None,
    weight_bytes: float = 2.0,
    kv_bytes: float = 2.0,
) -> float:
    """Total bytes one decode step reads: weights once for the batch (the routed experts only
    those touched) plus every sequence's KV cache. Arguments as `decode_step_breakdown`."""
    return decode_step_breakdown(
        shape,
        batch,
        context_len,
        experts_touched=experts_touched,
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
    )["total"]


def decode_step_flops(shape: MoEShape, batch: int, context_len: int) -> float:
    """FLOPs of one decode step: 2 per active matmul weight per token (the input embedding is a
    lookup, not a matmul) plus attention over the S cached positions (and the new one)."""
    B, S, *_ = _check_step(shape, batch, context_len, None, 2.0, 2.0)
    embed = 0 if shape.tie_embeddings else shape.vocab_size * shape.d_model
    matmul_params = shape.active_params - embed
    return 2.0 * B * matmul_params + B * (S + 1) * shape.n_layers * shape.attn_flops_per_position


def arithmetic_intensity(
    shape: MoEShape,
    batch: int,
    context_len: int,
    *,
    experts_touched: float | None = None,
    weight_bytes: float = 2.0,
    kv_bytes: float = 2.0,
) -> float:
    """FLOPs per byte read of one decode step: `decode_step_flops / decode_step_bytes`."""
    nbytes = decode_step_bytes(
        shape,
        batch,
        context_len,
        experts_touched=experts_touched,
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
    )
    return decode_step_flops(shape, batch, context_len) / nbytes


@dataclass(frozen=True)
class GPU:
    """An accelerator as the roofline sees it: HBM bandwidth and dense bf16 peak.

    Args:
        name: for tables.
        bandwidth: bytes per second from HBM.
        peak_flops: dense bf16 FLOP/s (not the 2:4-sparsity figure).
        memory: bytes of HBM.
        source: where the numbers come from.
    """

    name: str
    bandwidth: float
    peak_flops: float
    memory: float
    source: str

    @property
    def ridge(self) -> float:
        """The intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak_flops / self.bandwidth


GPUS: dict[str, GPU] = {
    "H100 SXM": GPU(
        "H100 SXM", 3.35e12, 989e12, 80e9, "NVIDIA H100 Tensor Core GPU datasheet (SXM column)"
    ),
    "H200 SXM": GPU(
        "H200 SXM", 4.8e12, 989e12, 141e9, "NVIDIA H200 Tensor Core GPU datasheet (SXM column)"
    ),
    "A100 80GB SXM": GPU(
        "A100 80GB SXM", 2.039e12, 312e12, 80e9, "NVIDIA A100 Tensor Core GPU datasheet"
    ),
}


def decode_step_time(
    shape: MoEShape,
    gpu: GPU,
    batch: int,
    context_len: int,
    *,
    experts_touched: float | None = None,
    weight_bytes: float = 2.0,
    kv_bytes: float = 2.0,
) -> float:
    """The roofline's bound on one decode step's seconds: max(bytes / bandwidth, FLOPs / peak)."""
    if not isinstance(gpu, GPU):
        raise TypeError(f"gpu must be a GPU, got {type(gpu).__name__}")
    nbytes = decode_step_bytes(
        shape,
        batch,
        context_len,
        experts_touched=experts_touched,
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
    )
    return max(
        nbytes / gpu.bandwidth, decode_step_flops(shape, batch, context_len) / gpu.peak_flops
    )


def compute_bound_batch(
    shape: MoEShape, gpu: GPU, context_len: int, *, max_batch: int = 1 << 16, **kwargs
) -> int | None:
    """The smallest batch whose decode step is compute-bound (intensity >= the GPU's ridge), or
    None if none up to `max_batch` is (a long context's KV reads can keep it memory-bound for
    ever, since they grow with B as fast as the FLOPs do). Extra keyword arguments go to
    `arithmetic_intensity` (not `experts_touched`: it depends on the batch)."""
    if not isinstance(gpu, GPU):
        raise TypeError(f"gpu must be a GPU, got {type(gpu).__name__}")
    max_batch = check_int("max_batch", max_batch, low=1)

    def bound(b: int) -> bool:
        return arithmetic_intensity(shape, b, context_len, **kwargs) >= gpu.ridge

    if not bound(max_batch):
        return None
    lo, hi = 1, max_batch  # the intensity grows with B here; bisect for the first B that is bound
    if bound(lo):
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if bound(mid) else (mid, hi)
    return hi
