"""Serving an MoE model: decoding with a KV cache, the decode roofline, expert caches and offloading.

    from minimoe.serving import lru_hits, belady_hits, expected_experts_touched

The contract the course's chapter 10 builds on: the cache policies (`lru_hits`, `lfu_hits`,
`belady_hits`), the expected experts touched by a decode batch, the bytes and arithmetic
intensity of a decode step for a model's `MoEShape`, and the routing trace format
(`RoutingTrace`, `flatten_trace`) the offloaded runtime and the cache simulator share.
"""

from minimoe.serving.cache import (
    BeladyCache,
    ExpertCache,
    LFUCache,
    LRUCache,
    belady_hits,
    lfu_hits,
    lru_hits,
    make_cache,
)
from minimoe.serving.roofline import (
    GPU,
    GPUS,
    MoEShape,
    arithmetic_intensity,
    compute_bound_batch,
    decode_step_breakdown,
    decode_step_bytes,
    decode_step_flops,
    decode_step_time,
    expected_experts_touched,
)
from minimoe.serving.shapes import (
    REAL_MODELS,
    meta_param_count,
    real_model_config,
    real_model_shape,
    shape_from_config,
    shape_from_lm,
)
from minimoe.serving.trace import RoutingTrace, experts_touched, flatten_trace, trace_keys_TLK

__all__ = [
    "GPU",
    "GPUS",
    "REAL_MODELS",
    "BeladyCache",
    "ExpertCache",
    "LFUCache",
    "LRUCache",
    "MoEShape",
    "RoutingTrace",
    "arithmetic_intensity",
    "belady_hits",
    "compute_bound_batch",
    "decode_step_breakdown",
    "decode_step_bytes",
    "decode_step_flops",
    "decode_step_time",
    "expected_experts_touched",
    "experts_touched",
    "flatten_trace",
    "lfu_hits",
    "lru_hits",
    "make_cache",
    "meta_param_count",
    "real_model_config",
    "real_model_shape",
    "shape_from_config",
    "shape_from_lm",
    "trace_keys_TLK",
]
