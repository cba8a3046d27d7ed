"""Causality, measured: does a layer's (or a model's) output at position t move when only later tokens change?

A decoder must not see the future: the output at position s may depend on positions <= s only.
Attention is made causal by its mask; a router is causal when each token's routing depends on
that token alone (token choice without capacity) or on earlier tokens only. Routers that
compare tokens with each other over the whole group break it: expert choice (an expert picks
the top-C tokens of the group, later ones included; Zhou et al. 2022, arXiv 2202.09368) and Soft
MoE (each slot averages every token; Puigcerver et al. 2023, arXiv 2308.00951, section 6).

The measurement: for each cut t, replace every token at positions >= t (in every sequence of
the batch) and record the largest change of the output at positions < t:

    leak_S[t] = max over b, s < t of |f(x)[b, s] - f(x with positions >= t replaced)[b, s]|

leak_S[0] = 0 (nothing lies before position 0). The leak is max_t leak_S[t]. The model is run
on a float64 copy in eval mode by default, so a causal model leaks exactly 0 up to float64
rounding of reordered sums (different batch compositions can reorder a matmul's additions);
`causal` allows `rtol` times the output's scale for that.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from minimoe.validate import check_int, check_real, check_tensor

__all__ = ["CausalityReport", "measure_causality"]


@dataclass
class CausalityReport:
    """What `measure_causality` found.

    Attributes:
        leak: the largest change at positions < t over all cuts t (a float; 0 = causal).
        leak_S: the change for each cut t (float64, length S; leak_S[0] = 0 by definition, and
            NaN at cuts that were not measured).
        scale: the largest |output| on the unchanged input, the unit of `rtol`.
        rtol: the relative tolerance of `causal`.
    """

    leak: float
    leak_S: torch.Tensor
    scale: float
    rtol: float

    @property
    def causal(self) -> bool:
        """Whether the leak is within rounding: leak <= rtol * max(scale, 1e-30)."""
        return self.leak <= self.rtol * max(self.scale, 1e-30)


def _output(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]  # (y, result) of a layer, (logits, results) of a model
    check_tensor("the model's output", out)
    return out


@torch.no_grad()
def measure_causality(
    model: nn.Module | Callable,
    x: torch.Tensor,
    *,
    positions: Sequence[int] | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float64,
    rtol: float = 1e-6,
) -> CausalityReport:
    """Measure how much the output before position t changes when only positions >= t change.

    Args:
        model: a layer or a model, called as `model(x)`; it may return a tensor or a tuple whose
            first element is the output. The output's dims 0 and 1 must be batch and sequence.
        x: float (B, S, D) hidden states (positions >= t are replaced by Gaussian noise of x's
            scale), or int64 (B, S) token ids (replaced by random ids in [0, vocab_size)).
        positions: the cuts t to measure (default every t in 1..S-1).
        vocab_size: for token ids: the vocabulary to draw from (default `model.cfg.vocab_size`).
        seed: seeds the replacement tokens.
        dtype: run a copy of the model (and float x) in this dtype, in eval mode; None runs the
            model as it is (its mode is left unchanged).
        rtol: the tolerance of `CausalityReport.causal`, relative to the output's scale.

    Returns:
        A `CausalityReport` (leak, leak_S, scale, rtol; `.causal`).
    """
    if not callable(model):
        raise TypeError(f"model must be callable (a layer or a model), got {type(model).__name__}")
    check_tensor("x", x)
    rtol = check_real("rtol", rtol, low=0.0)
    seed = check_int("seed", seed)
    is_ids = not x.is_floating_point()
    if is_ids:
        if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
            raise ValueError(
                f"token ids x must be a (B, S) int64 tensor, got {x.dtype} {tuple(x.shape)}"
            )
        if vocab_size is None:
            vocab_size = getattr(getattr(model, "cfg", None), "vocab_size", None)
        if vocab_size is None:
            raise ValueError("token ids need vocab_size (the model has no cfg.vocab_size)")
        vocab_size = check_int("vocab_size", vocab_size, low=1)
    elif x.dim() != 3:
        raise ValueError(f"hidden states x must be (B, S, D), got shape {tuple(x.shape)}")
    S = x.shape[1]
    cuts = (
        list(range(1, S))
        if positions is None
        else [check_int("position", t, low=0, high=S - 1) for t in positions]
    )
    if dtype is not None and isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(dtype).eval()
        if not is_ids:
            x = x.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    y = _output(model, x)
    if y.dim() < 2 or y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"the output must start with (B, S)={tuple(x.shape[:2])}, got {tuple(y.shape)}"
        )
    leak_S = torch.full((S,), float("nan"), dtype=torch.float64)
    if S:
        leak_S[0] = 0.0
    x_std = float(x.float().std()) if (not is_ids and x.numel() > 1) else 1.0
    for t in cuts:
        if t == 0:
            continue
        x2 = x.clone()
        n = x2[:, t:].shape
        if is_ids:
            x2[:, t:] = torch.randint(0, vocab_size, n, generator=gen).to(x.device, x.dtype)
        else:
            x2[:, t:] = (torch.randn(n, generator=gen, dtype=torch.float64) * x_std).to(
                x.device, x.dtype
            )
        y2 = _output(model, x2)
        leak_S[t] = float((y2[:, :t] - y[:, :t]).abs().max().double())
    measured = leak_S[~torch.isnan(leak_S)]
    leak = float(measured.max()) if measured.numel() else 0.0
    scale = float(y.abs().max()) if y.numel() else 0.0
    return CausalityReport(leak=leak, leak_S=leak_S, scale=scale, rtol=rtol)
