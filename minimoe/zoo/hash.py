"""Hash routing: a fixed, random map from token id to expert, learned by nobody.

Roller et al. 2021, "Hash Layers For Large Sparse Models" (arXiv 2106.04426), section 3: each
token id v is sent to expert hash(v), fixed before training. Their "Random Hash" is a random
assignment of the vocabulary to the experts; here a seeded random permutation of the V ids,
taken mod E, so each expert owns V/E ids (within one) and no load-balancing loss is needed for
the vocabulary (the *tokens* are balanced only as far as the text's id frequencies allow: a
frequent byte sends all its occurrences to one expert).

What it gives up: the routing cannot adapt to context (the same byte always meets the same
expert, whatever its neighbours) nor to training (no gradient reaches the routing). It is
causal by construction: a token's expert depends on its own id only.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.config import MoEConfig
from minimoe.experts import Experts
from minimoe.loop import loop_moe
from minimoe.validate import check_index_tensor, check_int
from minimoe.zoo.result import ZooResult, stats_from_counts

__all__ = ["HashLayer", "hash_route", "hash_table"]


def hash_table(vocab_size: int, n_experts: int, seed: int = 0) -> torch.Tensor:
    """expert_V: the expert of each token id, randperm(V) mod E (seeded; each expert V/E ids, ±1).

    Args:
        vocab_size: V (>= 1).
        n_experts: E (>= 1).
        seed: seeds the permutation (`torch.Generator().manual_seed(seed)`).
    """
    V = check_int("vocab_size", vocab_size, low=1)
    E = check_int("n_experts", n_experts, low=1)
    seed = check_int("seed", seed)
    perm_V = torch.randperm(V, generator=torch.Generator().manual_seed(seed))
    return perm_V % E


def hash_route(token_T: torch.Tensor, expert_V: torch.Tensor) -> torch.Tensor:
    """expert_T = expert_V[token_T]: each token's expert, looked up by its id.

    Args:
        token_T: token ids (an integer tensor of any shape, e.g. (T,) or (B, S)), in [0, V).
        expert_V: the table from `hash_table`.

    Returns:
        The experts, int64, with token_T's shape.
    """
    check_index_tensor("token_T", token_T)
    check_index_tensor("expert_V", expert_V, dim=1)
    V = expert_V.shape[0]
    if V < 1:
        raise ValueError("expert_V must map at least one token id, got an empty table")
    if token_T.numel():
        lo, hi = (int(v) for v in torch.aminmax(token_T))
        if lo < 0 or hi >= V:
            raise ValueError(f"token_T: token ids must be in [0, V={V}), got ids from {lo} to {hi}")
    return expert_V.to(token_T.device)[token_T.long()].long()


class HashLayer(nn.Module):
    """A Hash layer (arXiv 2106.04426): each token goes to expert hash(token id), gate 1.

    It needs the token ids: the caller passes `context={"token_ids": ids}` with x's leading shape
    (the tiny LM does; a task without token ids cannot use it).

    Args:
        cfg: the `MoEConfig` (D, E, activation).
        vocab_size: V of the ids.
        d_ff: each expert's hidden size; default K * F, so a token meets as many FFN weights as
            under top-K token choice of F-wide experts (equal active parameters; the total
            doubles for K = 2).
        seed: seeds the hash table.

    Statistics: routed_E = load_E = tokens per expert; no drops; entropy undefined (NaN): there
    is no router distribution. No loss: the hash balances the vocabulary, not the text.
    """

    uses_context = True

    def __init__(
        self, cfg: MoEConfig, *, vocab_size: int, d_ff: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_ff = cfg.top_k * cfg.d_ff if d_ff is None else check_int("d_ff", d_ff, low=1)
        self.register_buffer("expert_V", hash_table(vocab_size, cfg.n_experts, seed))
        self.experts = Experts(cfg.n_experts, cfg.d_model, self.d_ff, cfg.activation)

    def inactive_params(self) -> int:
        per_expert = sum(p.numel() for p in self.experts.parameters()) // self.cfg.n_experts
        return (self.cfg.n_experts - 1) * per_expert

    def forward(
        self, x: torch.Tensor, context: dict | None = None
    ) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if context is None or "token_ids" not in context:
            raise ValueError("hash routing needs the token ids: context={'token_ids': ids}")
        ids = context["token_ids"]
        if tuple(ids.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"token_ids must have shape {tuple(x.shape[:-1])}, got {tuple(ids.shape)}"
            )
        x_TD = x.reshape(-1, cfg.d_model)
        expert_T1 = hash_route(ids.reshape(-1), self.expert_V)[:, None]
        gate_T1 = torch.ones(expert_T1.shape, dtype=x.dtype, device=x.device)
        y_TD = loop_moe(x_TD, expert_T1, gate_T1, self.experts.params)
        zero = x.new_zeros(()).float()

        def stats():
            count_E = torch.bincount(expert_T1[:, 0].cpu(), minlength=cfg.n_experts)
            return stats_from_counts(count_E, count_E, 0.0, None)

        result = ZooResult(zero, zero, None, None, stats, {"expert_T": expert_T1[:, 0]})
        return y_TD.view(x.shape), result
