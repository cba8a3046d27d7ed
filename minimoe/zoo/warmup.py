"""Top-k warm-up: train with a larger K (or every expert) first, then anneal K down to its target.

The idea: a router collapses early, when a few experts that got slightly more tokens learn faster
and take the rest (Shazeer et al. 2017, arXiv 1701.06538, section 4; chapter 04's lab). With every
expert active at the start, every expert gets gradient from every token while the router is
still undecided. No single paper's schedule is followed: the linear schedule below is this
library's choice, and the arena measures whether it prevents the collapse:

    K(step) = round(K_start - (K_start - K) * min(1, step / (warmup_frac * total_steps)))

The trainer drives it through the generic hook `set_step(step, total_steps)` (called on every
layer that has it, before each training step); without calls the layer is plain top-K.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.config import MoEConfig
from minimoe.layer import MoELayer, MoEResult
from minimoe.loop import loop_moe
from minimoe.validate import check_int, check_real

__all__ = ["TopKWarmupLayer", "warmup_k"]


def warmup_k(step: int, total_steps: int, start_k: int, target_k: int, warmup_frac: float) -> int:
    """K at `step` (0-based) of `total_steps`: linear from start_k to target_k over the first
    warmup_frac of the steps, then target_k."""
    step = check_int("step", step, low=0)
    total = check_int("total_steps", total_steps, low=1)
    frac = check_real("warmup_frac", warmup_frac, low=0.0, high=1.0)
    if frac == 0.0:
        return target_k
    done = min(1.0, step / (frac * total))
    return int(round(start_k - (start_k - target_k) * done))


class TopKWarmupLayer(nn.Module):
    """An `MoELayer` whose K follows `warmup_k`; returns (y, MoEResult) as the plain layer.

    Args:
        cfg: the `MoEConfig` (its top_k is the target K).
        start_k: K at step 0 (default E: dense).
        warmup_frac: the share of training over which K anneals.
        experts_fn: the experts step.
    """

    uses_context = False

    def __init__(
        self, cfg: MoEConfig, *, start_k: int | None = None, warmup_frac: float = 0.25,
        experts_fn=loop_moe,
    ) -> None:  # fmt: skip
        super().__init__()
        E = cfg.n_experts
        self.start_k = check_int(
            "start_k", E if start_k is None else start_k, low=cfg.top_k, high=E
        )
        self.target_k = cfg.top_k
        self.warmup_frac = check_real("warmup_frac", warmup_frac, low=0.0, high=1.0)
        self.inner = MoELayer(cfg, experts_fn=experts_fn)
        self.current_k = cfg.top_k

    @property
    def cfg(self) -> MoEConfig:
        return self.inner.cfg

    @property
    def router(self):
        return self.inner.router

    @property
    def experts(self):
        return self.inner.experts

    def set_step(self, step: int, total_steps: int) -> None:
        """Set K for this training step (the trainer's per-step hook)."""
        k = warmup_k(step, total_steps, self.start_k, self.target_k, self.warmup_frac)
        if k != self.current_k:
            self.current_k = k
            self.inner.cfg = self.inner.cfg.replace(top_k=k)

    def inactive_params(self) -> int:
        """At the target K (the model that is served)."""
        E = self.inner.cfg.n_experts
        per = sum(p.numel() for p in self.inner.experts.parameters()) // E
        return (E - self.target_k) * per

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEResult]:
        return self.inner(x)
