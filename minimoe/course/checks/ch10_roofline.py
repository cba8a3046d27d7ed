"""Check for chapter 10, exercise 10.4: the bytes and the arithmetic intensity of a decode step.

The learner writes `decode_step(shape, batch, context_len) -> (bytes, intensity)` for a model's
`minimoe.serving.MoEShape`, bf16 weights and KV cache (2 bytes each), routing assumed independent:
the weights every step reads, the routed experts the batch touches (E·(1 − (1 − K/E)^B) per MoE
layer, exercise 10.1), and every sequence's KV cache; the intensity is
`decode_step_flops(shape, batch, context_len)` divided by those bytes. The answer is compared
with `minimoe.serving.decode_step_bytes` and `arithmetic_intensity` on real models' shapes
(Mixtral 8x7B, DeepSeek-V3 with its three dense layers, Qwen3-30B-A3B, OLMoE) and a named
mistake is found among: every expert read, B·K experts (with and without the cap at E), K experts
(as for one token), the KV cache left out, counted for one sequence or one layer, K and V counted
twice, the dense layers counted as MoE layers, float32 weights, the ratio inverted, the FLOPs of
one token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from minimoe.course.checks._common import Exercise
from minimoe.course.checks.ch03_capacity import diagnose_or_say
from minimoe.serving import (
    MoEShape,
    arithmetic_intensity,
    decode_step_breakdown,
    decode_step_bytes,
    decode_step_flops,
    decode_step_time,
    expected_experts_touched,
    real_model_shape,
)

DECODE_STEP = Exercise(
    "10.4",
    "the bytes and intensity of a decode step",
    library=(decode_step_bytes, decode_step_breakdown, arithmetic_intensity, decode_step_time),
)

# (model, B, S): the first case tells most mistakes apart; DeepSeek-V3 has dense layers
DECODE_CASES = [
    ("Qwen3-30B-A3B", 8, 1024),
    ("Mixtral-8x7B", 8, 1024),
    ("DeepSeek-V3", 32, 4096),
    ("OLMoE-1B-7B", 4, 256),
    ("Mixtral-8x7B", 1, 0),  # one token, an empty cache: only the weights
    ("DeepSeek-V3", 512, 128),  # every expert touched, nearly
]


def _step(shape: MoEShape, B: int, S: int, *, touched: str = "expected", kv: str = "all",
          moe_layers: bool = True, weight_bytes: float = 2.0, ratio: str = "flops/bytes",
          ) -> torch.Tensor:  # fmt: skip
    """(bytes, intensity) as a float64 pair, with switches that make it one of the mistakes."""
    E, K = shape.n_experts, shape.top_k
    n_touched = {"expected": expected_experts_touched(E, K, B), "all": E, "BK": B * K,
                 "BK capped": min(B * K, E), "K": K}[touched]  # fmt: skip
    layers = shape.n_moe_layers if moe_layers else shape.n_layers
    kv_elements = {"all": B * S * shape.kv_per_position * shape.n_layers,
                   "none": 0, "one sequence": S * shape.kv_per_position * shape.n_layers,
                   "one layer": B * S * shape.kv_per_position,
                   "twice": 2 * B * S * shape.kv_per_position * shape.n_layers}[kv]  # fmt: skip
    nbytes = (
        shape.always_read_params * weight_bytes
        + layers * n_touched * shape.expert_params * weight_bytes
        + kv_elements * 2.0
    )
    flops = decode_step_flops(shape, B, S)
    intensity = {"flops/bytes": flops / nbytes, "bytes/flops": nbytes / flops,
                 "one token": flops / B / nbytes}[ratio]  # fmt: skip
    return torch.tensor([nbytes, intensity], dtype=torch.float64)


def _variants() -> list[tuple[str, Callable[..., torch.Tensor]]]:
    def v(**kw: Any) -> Callable[..., torch.Tensor]:
        return lambda shape, B, S: _step(shape, B, S, **kw)

    bk = (
        "read B·K experts per layer (or min(B·K, E)), as if no two tokens shared an expert; "
        "use the expected number touched, E·(1 − (1 − K/E)^B)"
    )

    return [
        (
            "read every expert of every MoE layer; a decode step reads only the experts its "
            "batch touches: E·(1 − (1 − K/E)^B) per layer (exercise 10.1)",
            v(touched="all"),
        ),
        (
            "read K experts per layer, as for one token; B tokens touch E·(1 − (1 − K/E)^B)",
            v(touched="K"),
        ),
        (bk, v(touched="BK")),
        (bk, v(touched="BK capped")),
        (
            "left out the KV cache: every sequence reads its context_len cached positions in "
            "every layer, B · context_len · kv_per_position · n_layers elements of 2 bytes",
            v(kv="none"),
        ),
        (
            "read the KV cache of one sequence; each of the B sequences reads its own, so "
            "multiply by B",
            v(kv="one sequence"),
        ),
        (
            "read the KV cache of one layer; every layer has its own, so multiply by n_layers",
            v(kv="one layer"),
        ),
        (
            "counted K and V twice: kv_per_position already holds both (2 · kv_heads · head_dim "
            "for grouped-query attention)",
            v(kv="twice"),
        ),
        (
            "multiplied the experts by n_layers; only the n_moe_layers MoE layers have experts "
            "(DeepSeek-V3's first 3 layers are dense, counted in always_read_params)",
            v(moe_layers=False),
        ),
        (
            "used 4 bytes per weight (float32); the weights are bf16, 2 bytes each",
            v(weight_bytes=4.0),
        ),
        (
            "returned bytes / FLOPs; the arithmetic intensity is FLOPs / bytes",
            v(ratio="bytes/flops"),
        ),
        (
            "divided the FLOPs by the batch (the FLOPs of one token); the intensity is the whole "
            "step's FLOPs (decode_step_flops, all B tokens) over the step's bytes",
            v(ratio="one token"),
        ),
    ]


def _pair(out: Any, case: str) -> torch.Tensor:
    if out is None:
        raise DECODE_STEP.fail(f"returned None on {case}: did you forget the `return`?")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
        raise DECODE_STEP.fail(f"return 2 numbers (bytes, intensity) on {case}; got {got}")
    values = []
    for name, item in zip(("bytes", "intensity"), out):
        if isinstance(item, torch.Tensor) and item.numel() == 1:
            item = item.item()
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise DECODE_STEP.fail(
                f"{name} on {case} is a {type(item).__name__}; return plain numbers"
            )
        values.append(float(item))
    return torch.tensor(values, dtype=torch.float64)


def check_decode_step(fn: Callable) -> None:
    """Check `decode_step(shape, batch, context_len) -> (bytes, intensity)` against
    `minimoe.serving.decode_step_bytes` and `arithmetic_intensity` (bf16 weights and KV cache)."""
    shapes = {name: real_model_shape(name) for name, _, _ in DECODE_CASES}
    variants = _variants()
    for name, B, S in DECODE_CASES:
        shape = shapes[name]
        case = f"{name}, batch={B}, context_len={S}"
        out = _pair(DECODE_STEP.call(fn, shape, B, S, case=case), case)
        expected = torch.tensor(
            [decode_step_bytes(shape, B, S), arithmetic_intensity(shape, B, S)],
            dtype=torch.float64,
        )
        said = (
            f"wrong values on {case}: you returned {out[0]:.6g} bytes and intensity "
            f"{out[1]:.4g} FLOP/byte, expected {expected[0]:.6g} bytes and {expected[1]:.4g}"
        )
        if torch.isclose(out[0], expected[0], rtol=1e-6, atol=0) and not torch.isclose(
            out[1], expected[1], rtol=1e-6, atol=0
        ):
            said += " (the bytes are right: look at the intensity)"
        diagnose_or_say(
            DECODE_STEP,
            lambda said=said: said,
            out,
            expected,
            variants,
            (shape, B, S),
            f"{case}: you returned {out[0]:.6g} bytes, intensity {out[1]:.4g}; expected "
            f"{expected[0]:.6g} and {expected[1]:.4g}",
            atol=0.0,
            rtol=1e-6,
        )
    DECODE_STEP.passed(f"{len(DECODE_CASES)} cases on 4 real models' shapes")
