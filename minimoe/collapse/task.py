"""A synthetic task on which an unbalanced router collapses: clustered tokens, one shared target.

Tokens come from E clusters. Each token is x = m + c_k + z: a mean m shared by every token (as
the hidden states of a Transformer share a large common component), its cluster's centre c_k,
and noise z. The target has a part every cluster shares and a part of its own:

    y = U_0 tanh(V_0 z) * shared  +  U_k tanh(V_k z)

The model is one MoE layer (top-2 of 8 small GELU experts) followed by a linear readout.

Why the router collapses without balancing (the rich get richer; Shazeer et al. 2017, arXiv
1701.06538, section 4): early in training the shared part of the target is what every expert
learns first. An expert that gets a few more tokens learns it faster, so its output helps every
token a little more; the task loss then raises its gate, and because every token carries the
common component m, a step on that expert's router row raises its logit for *every* token. It
takes more tokens, learns faster still, and the others starve. The router starts balanced here
(its rows are made orthogonal to m), so the collapse is training's doing, not the
initialisation's. Experts that receive no tokens get no gradient and stay dead.

Left out: sequences and attention (the tokens are independent); the collapse of a real language
model is in `minimoe.lm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import ExpertsFn
from minimoe.layer import MoELayer, MoEResult
from minimoe.loop import loop_moe


@dataclass(frozen=True)
class TaskConfig:
    """The shape of the synthetic task and of the model trained on it.

    Args:
        n_clusters: clusters of tokens (= E experts, so one expert per cluster is possible).
        d_model: D, the token dimension.
        d_ff: F, each expert's hidden size (small, so one expert cannot fit every cluster).
        top_k: K.
        offset: length of the shared mean m (the larger, the stronger the pull to collapse).
        center_scale: spread of the cluster centres.
        noise: std of z.
        shared: weight of the target part every cluster shares.
        rank: rank of each target part.
        n_train, n_val: tokens in the training and validation sets.
        seed: seeds the task (the data), not the training.
    """

    n_clusters: int = 8
    d_model: int = 16
    d_ff: int = 8
    top_k: int = 2
    offset: float = 10.0
    center_scale: float = 1.5
    noise: float = 1.0
    shared: float = 1.5
    rank: int = 2
    n_train: int = 4096
    n_val: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_clusters", "d_model", "d_ff", "top_k", "rank", "n_train", "n_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.top_k > self.n_clusters:
            raise ValueError(f"top_k={self.top_k} > n_clusters={self.n_clusters}")


@dataclass
class ClusterTask:
    """Training and validation data of the task.

    Attributes:
        x_train_TD, y_train_TD, cluster_train_T: training tokens, targets and cluster ids.
        x_val_TD, y_val_TD, cluster_val_T: the same for validation.
        mean_D: the shared mean m.
        target_var: mean variance of the validation targets (the loss of predicting the mean).
    """

    cfg: TaskConfig
    x_train_TD: torch.Tensor
    y_train_TD: torch.Tensor
    cluster_train_T: torch.Tensor
    x_val_TD: torch.Tensor
    y_val_TD: torch.Tensor
    cluster_val_T: torch.Tensor
    mean_D: torch.Tensor
    target_var: float


def make_task(cfg: TaskConfig | None = None) -> ClusterTask:
    """Draw the task's data, seeded by `cfg.seed` (float32, CPU).

    Returns:
        A `ClusterTask`.
    """
    cfg = cfg or TaskConfig()
    E, D, R = cfg.n_clusters, cfg.d_model, cfg.rank
    g = torch.Generator().manual_seed(cfg.seed)
    centers_ED = torch.randn(E, D, generator=g) * cfg.center_scale
    mean_D = torch.randn(D, generator=g)
    mean_D = mean_D / mean_D.norm() * cfg.offset
    u_EDR = torch.randn(E, D, R, generator=g) / R**0.5
    v_ERD = torch.randn(E, R, D, generator=g) / D**0.5
    u0_DR = torch.randn(D, R, generator=g) / R**0.5
    v0_RD = torch.randn(R, D, generator=g) / D**0.5

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cluster_T = torch.randint(0, E, (n,), generator=g)
        z_TD = cfg.noise * torch.randn(n, D, generator=g)
        x_TD = mean_D + centers_ED[cluster_T] + z_TD
        own_TR = torch.tanh(torch.einsum("trd,td->tr", v_ERD[cluster_T], z_TD))
        y_TD = torch.einsum("tdr,tr->td", u_EDR[cluster_T], own_TR)
        y_TD = y_TD + cfg.shared * torch.tanh(z_TD @ v0_RD.t()) @ u0_DR.t()
        return x_TD, y_TD, cluster_T

    train = sample(cfg.n_train)
    val = sample(cfg.n_val)
    target_var = float(val[1].var(dim=0).mean())
    return ClusterTask(cfg, *train, *val, mean_D, target_var)


class CollapseModel(nn.Module):
    """One MoE layer and a linear readout: y_hat = W (MoE(x)) + b.

    Args:
        moe_cfg: the layer's `MoEConfig` (d_model = the task's D).
        mean_D: the task's shared mean; the router rows are made orthogonal to it, so every expert
            starts with about the same share of tokens.
        router_scale: multiplies the initial router weights (small: an undecided router).
        experts_fn: the experts implementation.
        layer: another MoE layer to use instead of `MoELayer(moe_cfg)` (a `minimoe.zoo` router);
            the weights through which it reads x to route (a router's `w_ED`, a recurrent
            router's `w_proj_ZD`, Soft MoE's slots `phi_DEC`) get the same start.
    """

    def __init__(
        self,
        moe_cfg: MoEConfig,
        mean_D: torch.Tensor,
        *,
        router_scale: float = 0.1,
        experts_fn: ExpertsFn = loop_moe,
        layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.moe = MoELayer(moe_cfg, experts_fn=experts_fn) if layer is None else layer
        self.readout = nn.Linear(moe_cfg.d_model, moe_cfg.d_model)
        m_D = mean_D / mean_D.norm().clamp_min(1e-12)
        with torch.no_grad():
            for name, w in self.moe.named_parameters():
                if name.endswith(("router.w_ED", "w_proj_ZD")):  # rows read x
                    w.sub_(torch.outer(w @ m_D, m_D)).mul_(router_scale)
                elif name.endswith("phi_DEC"):  # each slot's column reads x
                    w.sub_(torch.einsum("d,ec->dec", m_D, torch.einsum("d,dec->ec", m_D, w)))
                    w.mul_(router_scale)

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, MoEResult]:
        """x_TD -> (prediction_TD, the MoE layer's result: an `MoEResult` or alike)."""
        h_TD, result = self.moe(x_TD)
        return self.readout(h_TD), result
