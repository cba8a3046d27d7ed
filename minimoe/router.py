"""The router: a linear map from tokens to expert logits, in float32, with optional noise.

Noise is applied only in training mode (`module.train()`); leaving it on at evaluation is a bug
found in several tutorials (makeMoE, nanoMoE; ColossalAI PR #419 fixed the same thing).

| noise      | what it does                                                 | used by |
|------------|--------------------------------------------------------------|---------|
| "shazeer"  | l' = l + N(0,1) * softplus(x W_noise), a learned noise scale | Shazeer et al. 2017, eq. 3-5 |
| "jitter"   | x' = x * U(1-ε, 1+ε) on the router *input*                   | HF Switch/Mixtral router_jitter_noise, DeepSpeed 'Jitter', MegaBlocks |
| "gumbel"   | selection on l + Gumbel(0,1); weights from the clean l       | DeepSpeed 'RSample', ST-MoE |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Router(nn.Module):
    """Router logits for each token, computed in float32.

    Args:
        d_model: D.
        n_experts: E.
        noise: "none", "shazeer", "jitter" or "gumbel".
        jitter_eps: ε of the multiplicative jitter.
        selection_bias: keep a selection-only bias buffer `bias_E` (DeepSeek-V3 balancing).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        noise: str = "none",
        jitter_eps: float = 1e-2,
        selection_bias: bool = False,
    ) -> None:
        super().__init__()
        self.noise = noise
        self.jitter_eps = jitter_eps
        self.w_ED = nn.Parameter(torch.randn(n_experts, d_model) / d_model**0.5)
        # zero init: no noise at first, the model learns how much it wants (Shazeer et al. 2017)
        self.w_noise_ED = (
            nn.Parameter(torch.zeros(n_experts, d_model)) if noise == "shazeer" else None
        )
        self.register_buffer("bias_E", torch.zeros(n_experts) if selection_bias else None)

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (logits_TE, select_noise_TE): float32 logits, and the noise to add to them for
        the selection only (Gumbel), or None."""
        x_TD = x_TD.float()
        training = self.training and self.noise != "none"
        if training and self.noise == "jitter":
            eps = self.jitter_eps
            x_TD = x_TD * torch.empty_like(x_TD).uniform_(1.0 - eps, 1.0 + eps)
        logits_TE = x_TD @ self.w_ED.float().t()
        if training and self.noise == "shazeer":
            std_TE = F.softplus(x_TD @ self.w_noise_ED.float().t())
            logits_TE = logits_TE + torch.randn_like(logits_TE) * std_TE
        select_noise_TE = None
        if training and self.noise == "gumbel":
            u_TE = torch.rand_like(logits_TE).clamp_(1e-20, 1.0)
            select_noise_TE = -torch.log((-torch.log(u_TE)).clamp_min(1e-20))  # Gumbel(0, 1)
        return logits_TE, select_noise_TE

    @torch.no_grad()
    def update_bias(self, load_E: torch.Tensor, rate: float = 1e-3) -> None:
        """Aux-loss-free balancing (arXiv 2408.15664): b_e += rate * sign(mean_load - load_e)."""
        if self.bias_E is None:
            raise RuntimeError("this router has no selection bias (selection_bias=False)")
        load_E = load_E.float()
        self.bias_E += rate * torch.sign(load_E.mean() - load_E)
