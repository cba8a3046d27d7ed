"""PEER: many tiny experts, found by product-key retrieval (the "million experts" direction).

He 2024, "Mixture of A Million Experts" (arXiv 2407.04153), sections 2-3. A token-choice router
scores every expert, so its cost grows with E; PEER keeps E large (the paper goes to 1024^2) and
the experts tiny (one hidden neuron each), and finds each token's top-K without scoring all E:

- **Product keys** (Lample et al. 2019, arXiv 1907.05242): the E = n1 * n2 experts are the cells
  of an n1 x n2 grid. Expert (i, j) has the key [c_i ; c'_j], the concatenation of a row key and a
  column key, so its score for a query q = [q1 ; q2] is q1 . c_i + q2 . c'_j. The top-K of those
  E sums lies among the pairs of the top-K rows and the top-K columns (a pair outside has a row
  or a column with K better ones, so K better pairs): two searches over n1 and n2 keys, then one
  over K^2 candidates, instead of one over E. E need not be a square here: n1 is E's largest
  divisor up to sqrt(E) (E prime gives a 1 x E grid, a plain top-K).
- **Heads**: h query projections retrieve from the same experts; the layer's output is the sum
  of the heads' outputs. Within a head the K retrieved scores go through a softmax (the
  paper's router g).
- **Tiny experts**: expert e is an FFN of hidden size `expert_size` (1 in the paper: a down
  vector and an up vector, plus a gate vector for SwiGLU).

Sizes here. By default h = F (the config's d_ff) heads of K singleton experts: a token runs
h * K = K * F hidden neurons, as many as top-K token choice with F-wide experts (equal active
expert weights), spread over h * K experts of E instead of K of E.

Left out: the paper's batch normalisation of the queries, and its initialisation. No
load-balancing loss (the paper uses none) and no z-loss; the statistics count each expert's
retrievals over all heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F_nn
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import Experts, activate
from minimoe.validate import check_int
from minimoe.zoo.result import ZooResult, stats_from_counts

__all__ = ["PEERLayer", "grid_shape", "product_key_topk"]


def grid_shape(n_experts: int) -> tuple[int, int]:
    """(n1, n2) with n1 * n2 = E and n1 the largest divisor of E up to sqrt(E)."""
    E = check_int("n_experts", n_experts, low=1)
    n1 = max(d for d in range(1, math.isqrt(E) + 1) if E % d == 0)
    return n1, E // n1


def product_key_topk(
    q1_TH: torch.Tensor, q2_TH: torch.Tensor, rows_ND: torch.Tensor, cols_ND: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k experts of each query over the product keys, without scoring all n1 * n2.

    Args:
        q1_TH, q2_TH: the two halves of each query, (..., H) with H = d_key / 2.
        rows_ND: the n1 row keys (n1, H); cols_ND: the n2 column keys (n2, H).
        k: experts per query (1 <= k <= n1 * n2).

    Returns:
        (score_TK, expert_TK): the k best scores q1 . row_i + q2 . col_j, largest first, and
        their experts i * n2 + j, with q's leading shape.
    """
    n1, n2 = rows_ND.shape[0], cols_ND.shape[0]
    k = check_int("k", k, low=1, high=n1 * n2)
    s1, i1 = (q1_TH @ rows_ND.t()).topk(min(k, n1), dim=-1)  # (..., k1)
    s2, i2 = (q2_TH @ cols_ND.t()).topk(min(k, n2), dim=-1)  # (..., k2)
    pair = s1[..., :, None] + s2[..., None, :]  # (..., k1, k2): the candidates
    score, flat = pair.flatten(-2).topk(k, dim=-1)
    row = i1.gather(-1, flat // i2.shape[-1])
    col = i2.gather(-1, flat % i2.shape[-1])
    return score, row * n2 + col


class PEERLayer(nn.Module):
    """A PEER layer (arXiv 2407.04153): h heads each retrieve K of E tiny experts by product keys.

    Args:
        cfg: the `MoEConfig` (D, E, K, activation; F sets the default number of heads).
        heads: h query heads (default cfg.d_ff: equal active expert weights with token choice).
        d_key: the query and key size (even; default D).
        expert_size: each expert's hidden size (default 1, the paper's singleton experts).

    Statistics: routed_E = load_E = retrievals per expert over all heads; no drops; entropy
    undefined (NaN): each head's softmax is over its K retrieved experts, not over all E.
    """

    def __init__(
        self,
        cfg: MoEConfig,
        *,
        heads: int | None = None,
        d_key: int | None = None,
        expert_size: int = 1,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        D, E = cfg.d_model, cfg.n_experts
        self.heads = cfg.d_ff if heads is None else check_int("heads", heads, low=1)
        self.d_key = D if d_key is None else check_int("d_key", d_key, low=2)
        if self.d_key % 2:
            raise ValueError(f"d_key must be even (two halves of a query), got {self.d_key}")
        self.expert_size = check_int("expert_size", expert_size, low=1)
        self.n1, self.n2 = grid_shape(E)
        half = self.d_key // 2
        self.query = nn.Linear(D, self.heads * self.d_key, bias=False)
        self.rows_ND = nn.Parameter(torch.randn(self.n1, half) / half**0.5)
        self.cols_ND = nn.Parameter(torch.randn(self.n2, half) / half**0.5)
        self.experts = Experts(E, D, self.expert_size, cfg.activation)

    def inactive_params(self) -> int:
        """The experts a token does not reach: at least E - h * K of them (heads may meet)."""
        E, used = self.cfg.n_experts, min(self.cfg.n_experts, self.heads * self.cfg.top_k)
        per_expert = sum(p.numel() for p in self.experts.parameters()) // E
        return (E - used) * per_expert

    def retrieve(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_THK, expert_THK): each head's K experts and their softmax weights."""
        T, h, half = x_TD.shape[0], self.heads, self.d_key // 2
        q_THQ = self.query(x_TD).view(T, h, self.d_key)
        score_THK, expert_THK = product_key_topk(
            q_THQ[..., :half], q_THQ[..., half:], self.rows_ND, self.cols_ND, self.cfg.top_k
        )
        return score_THK.softmax(dim=-1), expert_THK

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if x.shape[-1] != cfg.d_model:
            raise ValueError(f"x's last dimension must be d_model={cfg.d_model}, got {x.shape[-1]}")
        x_TD = x.reshape(-1, cfg.d_model)
        gate_THK, expert_THK = self.retrieve(x_TD)
        T = x_TD.shape[0]
        expert_TM = expert_THK.reshape(T, self.heads * cfg.top_k)  # M = h * K per token
        gate_TM = gate_THK.reshape(T, self.heads * cfg.top_k)
        p = self.experts.params
        E = cfg.n_experts

        def rows(w):  # the retrieved experts' weights, (T, M, ...): an embedding lookup, whose
            # backward sums into the table by sorting (much faster on a CPU than indexing's)
            return F_nn.embedding(expert_TM, w.reshape(E, -1)).view(*expert_TM.shape, *w.shape[1:])

        h_TMF = torch.einsum("tmfd,td->tmf", rows(p.w1_EFD), x_TD)
        u_TMF = None
        if p.w3_EFD is not None:
            u_TMF = torch.einsum("tmfd,td->tmf", rows(p.w3_EFD), x_TD)
        a_TMF = activate(h_TMF, u_TMF, p.activation) * gate_TM[..., None].to(h_TMF.dtype)
        y_TD = torch.einsum("tmf,tmdf->td", a_TMF, rows(p.w2_EDF))
        zero = x.new_zeros(()).float()

        def stats():
            count_E = torch.bincount(expert_TM.reshape(-1).cpu(), minlength=cfg.n_experts)
            return stats_from_counts(count_E, count_E, 0.0, None)

        extra = {"expert_THK": expert_THK, "gate_THK": gate_THK}
        return y_TD.reshape(x.shape), ZooResult(zero, zero, None, None, stats, extra)
