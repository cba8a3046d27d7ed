"""What the benchmark runs: the implementations, with the same weights, and the fixed routing.

| impl            | what                                                                          |
|-----------------|-------------------------------------------------------------------------------|
| loop, einsum, padded_bmm, grouped_mm | every entry of `minimoe.impls.IMPLEMENTATIONS` that runs at full size on a CPU |
| triton          | `minimoe.triton.triton_moe` (the registry's "triton"), default tiles, on a GPU |
| triton-tuned    | the same with `minimoe.triton.tuned_config` (tiles by shape and T)             |
| hf-eager        | HF transformers `MixtralExperts`, `experts_implementation="eager"`             |
| hf-batched_mm   | the same module with "batched_mm" (gathers one weight matrix per slot)         |
| hf-grouped_mm   | the same module with "grouped_mm" (sort + `torch.nn.functional.grouped_mm`)    |
| dense           | a dense SwiGLU FFN with hidden size K*F: the same useful FLOPs, no routing     |
| router          | `minimoe.Router` + `minimoe.route` ("mixtral" gating), timed on its own        |

HF's experts are built from a `MixtralConfig` whose `experts_implementation` picks the backend
(transformers v5 `use_experts_implementation`); minimoe's weights are copied in (gate_up_proj is
[w1; w3] stacked along F, down_proj is w2), and each is called as
`experts(hidden_states, top_k_index, top_k_weights)` with minimoe's routing.

Routing: "uniform" is a seeded random router (the load is balanced up to noise); "skewed" adds
a Zipf log-prior, log p_e with p_e proportional to (e + 1)^-1.2, to the router logits, so a few
experts get most tokens.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import minimoe
from minimoe.impls import IMPLEMENTATIONS

ZIPF_EXPONENT = 1.2
# the registry's implementations at full size on a CPU (the float64 oracle is not timed)
MINIMOE_CPU = tuple(name for name, impl in IMPLEMENTATIONS.items() if impl.cpu_speed)
MINIMOE_VECTORISED = (*(n for n in MINIMOE_CPU if n != "loop"), "triton", "triton-tuned")
HF_IMPLS = ("hf-eager", "hf-batched_mm", "hf-grouped_mm")


@dataclass
class Impl:
    """One benchmarked implementation: fn(x_TD, expert_TK, gate_TK) -> y_TD, and the name of
    the `minimoe.moe_cost` model that predicts how its time grows with T (None: never skipped)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    cost_model: str | None


def make_params(D: int, F: int, E: int, device, dtype, seed: int = 0) -> minimoe.ExpertParams:
    """Seeded SwiGLU expert weights, scaled like `minimoe.Experts`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def w(*shape: int, fan_in: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) / fan_in**0.5).to(device, dtype)

    return minimoe.ExpertParams(w(E, F, D, fan_in=D), w(E, D, F, fan_in=F), w(E, F, D, fan_in=D))


def make_router(D: int, E: int, device, seed: int = 0) -> minimoe.Router:
    torch.manual_seed(seed)
    return minimoe.Router(D, E).to(device).eval()


def make_routing(
    router: minimoe.Router, x_TD: torch.Tensor, K: int, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert_TK, gate_TK) for x, computed once before timing; gate in x's dtype."""
    with torch.no_grad():
        logits_TE, _ = router(x_TD)
        if kind == "skewed":
            E = logits_TE.shape[1]
            ranks_E = torch.arange(1, E + 1, device=x_TD.device, dtype=torch.float32)
            logits_TE = logits_TE + torch.log_softmax(-ZIPF_EXPONENT * ranks_E.log(), 0)
        elif kind != "uniform":
            raise ValueError(f"routing={kind!r} is not 'uniform' or 'skewed'")
        r = minimoe.route(logits_TE, K, "mixtral")
    return r.expert_TK, r.gate_TK.to(x_TD.dtype)


def _hf_experts(params: minimoe.ExpertParams, K: int, backend: str) -> Callable:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    from transformers.utils import logging

    logging.set_verbosity_error()
    E, F, D = params.w1_EFD.shape
    cfg = MixtralConfig(
        hidden_size=D,
        intermediate_size=F,
        num_local_experts=E,
        num_experts_per_tok=K,
        hidden_act="silu",
        experts_implementation=backend,
    )
    with torch.device(params.w1_EFD.device):
        experts = MixtralExperts(cfg).to(params.w1_EFD.dtype).requires_grad_(False)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.cat([params.w1_EFD, params.w3_EFD], dim=1))
        experts.down_proj.copy_(params.w2_EDF)
    return lambda x, e, g: experts(x, e, g)


def _dense(D: int, F: int, K: int, device, dtype) -> Callable:
    p = make_params(D, K * F, 1, device, dtype, seed=1)
    w1, w2, w3 = p.w1_EFD[0], p.w2_EDF[0], p.w3_EFD[0]
    return lambda x, e, g: minimoe.ffn(x, w1, w2, w3, "swiglu")


def _triton_tuned(params: minimoe.ExpertParams, K: int) -> Callable:
    """triton_moe with the tuned tiles for this shape and the call's T."""
    from minimoe.triton import triton_moe, tuned_config

    E, F, D = params.w1_EFD.shape
    device = params.w1_EFD.device

    def fn(x, e, g):
        return triton_moe(x, e, g, params, config=tuned_config(x.shape[0], D, F, E, K, device))

    return fn


def build_impls(
    params: minimoe.ExpertParams, K: int, router: minimoe.Router, wanted
) -> tuple[dict[str, Impl], dict[str, str]]:
    """The implementations for one shape, and the ones left out with the reason."""
    E, F, D = params.w1_EFD.shape
    device, dtype = params.w1_EFD.device, params.w1_EFD.dtype

    def ours(f):
        return lambda x, e, g: f(x, e, g, params)

    impls = {
        name: Impl(name, ours(IMPLEMENTATIONS[name].fn), IMPLEMENTATIONS[name].cost_model)
        for name in MINIMOE_CPU
    }
    left_out = {}
    triton = IMPLEMENTATIONS["triton"]
    if importlib.util.find_spec(triton.needs) is None:
        left_out["triton"] = left_out["triton-tuned"] = f"{triton.needs} is not installed"
    elif device.type != "cuda":
        why = "GPU only (the CPU interpreter is for tiny shapes)"
        left_out["triton"] = left_out["triton-tuned"] = why
    else:
        impls["triton"] = Impl("triton", ours(triton.fn), triton.cost_model)
        impls["triton-tuned"] = Impl("triton-tuned", _triton_tuned(params, K), triton.cost_model)
    try:
        for name, backend, model in [
            ("hf-eager", "eager", "loop"),
            ("hf-batched_mm", "batched_mm", "grouped_mm"),
            ("hf-grouped_mm", "grouped_mm", "grouped_mm"),
        ]:
            impls[name] = Impl(name, _hf_experts(params, K, backend), model)
    except ImportError as err:
        for name in HF_IMPLS:
            left_out[name] = f"transformers is not installed ({err})"
    impls["dense"] = Impl("dense", _dense(D, F, K, device, dtype), "dense")
    impls["router"] = Impl("router", lambda x, e, g: make_routing(router, x, K, "uniform"), None)
    chosen = {n: i for n, i in impls.items() if wanted is None or n in wanted}
    return chosen, {n: r for n, r in left_out.items() if wanted is None or n in wanted}


def peak_bytes(name: str, T: int, D: int, F: int, E: int, K: int, C: int, b: int) -> int:
    """A rough size of the largest temporaries of an implementation, to skip what can't fit."""
    if name == "einsum":
        return 3 * T * E * C * b  # the float dispatch and combine tensors and a one-hot product
    if name == "hf-batched_mm":
        return T * K * 3 * F * D * b  # one gathered weight matrix per slot
    if name == "padded_bmm":
        return 3 * E * C * max(D, F) * b
    return 3 * T * K * max(D, F) * b


def max_load(expert_TK: torch.Tensor, E: int) -> int:
    """The largest number of slots of one expert (the C of the einsum and padded buffers)."""
    if expert_TK.numel() == 0:
        return 0
    return int(torch.bincount(expert_TK.reshape(-1), minlength=E).max())


def balanced_load(T: int, K: int, E: int) -> int:
    return math.ceil(T * K / E)
