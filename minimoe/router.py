"""The router: a linear map from tokens to expert logits, in float32, with optional noise.

Noise is applied only in training mode (`module.train()`); leaving it on at evaluation is a bug
found in several tutorials (makeMoE, nanoMoE; ColossalAI PR #419 fixed the same thing).

| noise      | what it does                                                 | used by |
|------------|--------------------------------------------------------------|---------|
| "shazeer"  | l' = l + N(0,1) * softplus(x W_noise), a learned noise scale | Shazeer et al. 2017, eq. 3-5 |
| "jitter"   | x' = x * U(1-ε, 1+ε), see the scopes below                   | Switch (arXiv 2101.03961), HF Switch/Mixtral router_jitter_noise, DeepSpeed 'Jitter', MegaBlocks |
| "gumbel"   | selection on l + Gumbel(0,1); weights from the clean l       | DeepSpeed 'RSample', ST-MoE |
| "gumbel_second" | first expert from the clean l, the others from l + Gumbel(0,1) | DeepSpeed top2gating, top2_2nd_expert_sampling=True (its default) |

Jitter has two scopes, because the systems that name it disagree on who sees the jittered tokens:

- "router": only the router's input is jittered; the experts get the clean x (Switch
  Transformer paper, section 2.4; DeepSpeed 'Jitter' multiplies a copy for the gate; MegaBlocks).
- "router_and_experts": x is jittered once, before the layer, and both the router and the experts
  see it: HF Mixtral (`MixtralSparseMoeBlock.forward`, transformers 5.23) multiplies the hidden
  states in place (the caller's tensor too) before the gate and the experts. HF SwitchTransformers (5.23) jitters inside
  its router, but in place (`hidden_states *= ...`) after a `.to(float32)` that returns the same
  tensor for float32 input: the caller's tensor is mutated, so its experts see the jittered
  tokens too (for bf16/fp16 input the router jitters a copy: scope "router"). minimoe never
  mutates its input.

Both scopes draw U(1-ε, 1+ε) with one `uniform_` over a tensor of x's shape, so with the same
global seed they use the same noise as HF (tests/core/test_conventions.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import JITTER_SCOPES, NOISES
from minimoe.validate import check_bool, check_choice, check_float_tensor, check_int, check_real


class Router(nn.Module):
    """Router logits for each token, computed in float32.

    Args:
        d_model: D.
        n_experts: E.
        noise: "none", "shazeer", "jitter", "gumbel" or "gumbel_second".
        jitter_eps: ε of the multiplicative jitter.
        selection_bias: keep a selection-only bias buffer `bias_E` (DeepSeek-V3 balancing).
        jitter_scope: "router" (forward jitters its own input) or "router_and_experts" (the
            caller jitters x with `jitter` and gives the same x to router and experts; forward
            then adds no jitter of its own).
    """

    bias_E: torch.Tensor | None  # a buffer (saved with the weights), None without selection bias
    w_noise_ED: nn.Parameter | None  # Shazeer's noise weights, only with noise="shazeer"

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        noise: str = "none",
        jitter_eps: float = 1e-2,
        selection_bias: bool = False,
        jitter_scope: str = "router",
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, low=1)
        check_int("n_experts", n_experts, low=1)
        check_choice("noise", noise, NOISES)
        check_real("jitter_eps", jitter_eps, low=0.0, high=1.0, high_open=True)
        check_bool("selection_bias", selection_bias)
        self.jitter_scope = check_choice("jitter_scope", jitter_scope, JITTER_SCOPES)
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
        check_float_tensor("x_TD", x_TD)
        D = self.w_ED.shape[1]
        if x_TD.dim() < 1 or x_TD.shape[-1] != D:
            raise ValueError(f"x_TD must have shape (T, D={D}), got {tuple(x_TD.shape)}")
        x_TD = x_TD.float()
        training = self.training and self.noise != "none"
        if training and self.noise == "jitter" and self.jitter_scope == "router":
            x_TD = self.jitter(x_TD)
        logits_TE = x_TD @ self.w_ED.float().t()
        if training and self.noise == "shazeer" and self.w_noise_ED is not None:
            std_TE = F.softplus(x_TD @ self.w_noise_ED.float().t())
            logits_TE = logits_TE + torch.randn_like(logits_TE) * std_TE
        select_noise_TE = None
        if training and self.noise in ("gumbel", "gumbel_second"):
            u_TE = torch.rand_like(logits_TE).clamp_(1e-20, 1.0)
            select_noise_TE = -torch.log((-torch.log(u_TE)).clamp_min(1e-20))  # Gumbel(0, 1)
        return logits_TE, select_noise_TE

    def jitter(self, x_TD: torch.Tensor) -> torch.Tensor:
        """x * U(1-ε, 1+ε), elementwise, in x's dtype; a new tensor (x is not mutated)."""
        eps = self.jitter_eps
        return x_TD * torch.empty_like(x_TD).uniform_(1.0 - eps, 1.0 + eps)

    @torch.no_grad()
    def update_bias(self, load_E: torch.Tensor, rate: float = 1e-3) -> None:
        """Aux-loss-free balancing (arXiv 2408.15664): b_e += rate * sign(mean_load - load_e)."""
        if self.bias_E is None:
            raise RuntimeError("this router has no selection bias (selection_bias=False)")
        load_E = load_E.float()
        self.bias_E += rate * torch.sign(load_E.mean() - load_E)
